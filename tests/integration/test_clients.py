"""Our clients through the official SDKs, over real HTTP, against the scripted provider.

Every provider name runs the same contract: "scripted" and "openai" speak the OpenAI wire
format, "anthropic" the Anthropic one. Retries use real time.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from rlm_jobs.clients import CLIENT_FACTORIES, LLMClient, build_client, make_client
from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.clients.router import LLMRouter
from rlm_jobs.config import ModelPrice, Settings
from rlm_jobs.errors import ConfigError, ProviderError, ProviderRetryableError
from rlm_jobs.testing import FaultKind, ScriptedProvider

PROVIDERS = ["scripted", "openai", "anthropic"]
SYSTEM = "You answer from the text you are given."
PROMPT = (
    "Question: What is the secret code?\n\n"
    "Part 1 of 1:\nSome noise here. The secret code is ZX81. More noise."
)
MESSAGES: list[ChatMessage] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": PROMPT},
]


def tokens(text: str) -> int:
    return -(-len(text) // 4)


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def client(provider: str, scripted_settings: Settings) -> Iterator[LLMClient]:
    built = make_client(provider, scripted_settings)
    yield built
    built.close()


def outcomes(scripted: ScriptedProvider) -> list[str]:
    return [r.outcome for r in scripted.requests()]


# ---- success ---------------------------------------------------------------------------


def test_completion_text_and_usage_match_the_ledger(
    client: LLMClient, scripted_provider: ScriptedProvider
) -> None:
    done = client.complete(MESSAGES, model="generic", max_output_tokens=200)

    assert done.text == "The secret code is ZX81."
    assert done.input_tokens == tokens(SYSTEM + PROMPT)
    assert done.output_tokens == tokens(done.text)
    entry = scripted_provider.ledger()["scripted/generic"]
    assert (entry.calls, entry.input_tokens, entry.output_tokens) == (
        1,
        done.input_tokens,
        done.output_tokens,
    )


def test_scripted_requests_say_which_worker_sent_them(
    scripted_settings: Settings, scripted_provider: ScriptedProvider
) -> None:
    client = build_client("scripted", scripted_settings)
    try:
        client.complete(MESSAGES, model="generic", max_output_tokens=50)
    finally:
        client.close()
    (record,) = scripted_provider.requests()
    assert record.worker == f"{socket.gethostname()}:{os.getpid()}"
    assert record.user_agent is not None and "OpenAI" in record.user_agent


# ---- retryable failures ----------------------------------------------------------------


def test_429_waits_at_least_retry_after_then_succeeds(
    client: LLMClient, scripted_provider: ScriptedProvider
) -> None:
    scripted_provider.inject("429", retry_after_s=0.6)
    started = time.monotonic()

    done = client.complete(MESSAGES, model="generic", max_output_tokens=50)

    first, second = scripted_provider.requests()
    assert second.timestamp - first.timestamp >= 0.6
    assert time.monotonic() - started >= 0.6
    assert done.text == "The secret code is ZX81."
    assert outcomes(scripted_provider) == ["429", "ok"]


def test_500_is_retried(client: LLMClient, scripted_provider: ScriptedProvider) -> None:
    scripted_provider.inject("500", count=2)
    done = client.complete(MESSAGES, model="generic", max_output_tokens=50)
    assert done.text == "The secret code is ZX81."
    assert outcomes(scripted_provider) == ["500", "500", "ok"]
    assert scripted_provider.ledger()["scripted/generic"].calls == 1


def test_malformed_body_is_retried(client: LLMClient, scripted_provider: ScriptedProvider) -> None:
    scripted_provider.inject("malformed")
    done = client.complete(MESSAGES, model="generic", max_output_tokens=50)
    assert done.text == "The secret code is ZX81."
    assert outcomes(scripted_provider) == ["malformed", "ok"]


def test_malformed_every_time_fails_retryable_after_the_retries(
    client: LLMClient, scripted_provider: ScriptedProvider
) -> None:
    scripted_provider.inject("malformed", count=10)
    with pytest.raises(ProviderRetryableError, match="malformed") as info:
        client.complete(MESSAGES, model="generic", max_output_tokens=50)
    assert "gave up after 4 attempts" in str(info.value)
    assert outcomes(scripted_provider) == ["malformed"] * 4


def test_a_hung_server_times_out_is_retried_then_gives_up(
    provider: str, scripted_settings: Settings, scripted_provider: ScriptedProvider
) -> None:
    settings = scripted_settings.model_copy(update={"request_timeout_s": 0.3, "max_retries": 2})
    client = make_client(provider, settings)
    scripted_provider.inject("hang", count=3, hang_s=10)
    started = time.monotonic()
    try:
        with pytest.raises(ProviderRetryableError, match=r"did not answer within 0\.3s") as info:
            client.complete(MESSAGES, model="generic", max_output_tokens=50)
    finally:
        client.close()

    assert "gave up after 3 attempts" in str(info.value)
    assert time.monotonic() - started >= 3 * 0.3
    assert outcomes(scripted_provider) == ["hang"] * 3
    assert scripted_provider.ledger() == {}


def test_connection_refused_is_retryable(provider: str, scripted_settings: Settings) -> None:
    with ScriptedProvider() as gone:
        dead_url, dead_root = gone.url, gone.root_url
    settings = scripted_settings.model_copy(
        update={
            "scripted_base_url": dead_url,
            "openai_base_url": dead_url,
            "anthropic_base_url": dead_root,
            "max_retries": 1,
        }
    )
    client = make_client(provider, settings)
    try:
        with pytest.raises(ProviderRetryableError, match="connection failed"):
            client.complete(MESSAGES, model="generic", max_output_tokens=50)
    finally:
        client.close()


def test_retry_after_beyond_retry_max_s_is_not_waited_out(
    client: LLMClient, scripted_provider: ScriptedProvider
) -> None:
    scripted_provider.inject("429", retry_after_s=30)
    started = time.monotonic()
    with pytest.raises(ProviderRetryableError, match="exceeds retry_max_s") as info:
        client.complete(MESSAGES, model="generic", max_output_tokens=50)
    assert info.value.retry_after_s == 30
    assert time.monotonic() - started < 5
    assert outcomes(scripted_provider) == ["429"]


# ---- permanent failures ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("400", "Invalid request: scripted rejects this request"),
        ("401", "Incorrect API key provided: scripted-invalid"),
    ],
)
def test_4xx_fails_at_once_with_the_providers_message(
    client: LLMClient, scripted_provider: ScriptedProvider, kind: FaultKind, message: str
) -> None:
    scripted_provider.inject(kind)
    with pytest.raises(ProviderError, match=message) as info:
        client.complete(MESSAGES, model="generic", max_output_tokens=50)
    assert type(info.value) is ProviderError
    assert info.value.status_code == int(kind)
    assert outcomes(scripted_provider) == [kind]


def test_unknown_model_is_a_permanent_error(
    client: LLMClient, scripted_provider: ScriptedProvider
) -> None:
    with pytest.raises(ProviderError, match="does not exist") as info:
        client.complete(MESSAGES, model="no-such-model", max_output_tokens=50)
    assert type(info.value) is ProviderError
    assert info.value.status_code == 404
    assert outcomes(scripted_provider) == ["404"]


def test_no_sdk_exception_escapes(client: LLMClient, scripted_provider: ScriptedProvider) -> None:
    kinds: list[FaultKind] = ["400", "401", "500", "malformed", "429"]
    for kind in kinds:
        scripted_provider.inject(kind, count=5, retry_after_s=0)
        with pytest.raises(ProviderError) as info:
            client.complete(MESSAGES, model="generic", max_output_tokens=50)
        assert type(info.value).__module__ == "rlm_jobs.errors"
        scripted_provider.reset()


# ---- configuration -----------------------------------------------------------------------


def test_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown LLM provider 'acme'.*anthropic, openai, scripted"
    ):
        build_client("acme", Settings())


@pytest.mark.parametrize(
    ("provider_name", "hint"),
    [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")],
)
def test_missing_api_key_names_the_variable(provider_name: str, hint: str) -> None:
    settings = Settings(openai_api_key=None, anthropic_api_key=None)
    with pytest.raises(ConfigError, match=hint):
        build_client(provider_name, settings)


def test_scripted_without_a_url_says_how_to_start_one() -> None:
    with pytest.raises(ConfigError, match=r"RLM_JOBS_SCRIPTED_BASE_URL.*rlm_jobs.testing.provider"):
        build_client("scripted", Settings(scripted_base_url=None))


# ---- router ------------------------------------------------------------------------------


def test_router_prices_the_call(scripted_settings: Settings) -> None:
    with LLMRouter(scripted_settings) as router:
        done = router.complete("scripted/generic", MESSAGES, max_output_tokens=50)
    assert done.model == "scripted/generic"
    assert done.text == "The secret code is ZX81."
    # DEFAULT_PRICES: scripted/* at $1 in / $2 out per million tokens.
    assert done.cost_usd == pytest.approx((done.input_tokens * 1 + done.output_tokens * 2) / 1e6)
    assert done.latency_s > 0


def test_router_uses_exact_prices_from_settings(scripted_settings: Settings) -> None:
    price = ModelPrice(input_per_mtok=1_000_000, output_per_mtok=0)
    settings = scripted_settings.model_copy(update={"prices": {"anthropic/generic": price}})
    with LLMRouter(settings) as router:
        done = router.complete("anthropic/generic", MESSAGES, max_output_tokens=50)
    assert done.cost_usd == pytest.approx(done.input_tokens)


def test_router_routes_by_provider_and_caches_clients(scripted_settings: Settings) -> None:
    with LLMRouter(scripted_settings) as router:
        assert router.client("scripted") is router.client("scripted")
        assert router.client("anthropic") is not router.client("scripted")


def test_router_warm_up_builds_clients_without_calling(
    scripted_settings: Settings, scripted_provider: ScriptedProvider
) -> None:
    with LLMRouter(scripted_settings) as router:
        router.warm_up("scripted/generic", "anthropic/generic", "scripted/needle")
        assert router.client("scripted") is router.client("scripted")
        with pytest.raises(ConfigError):
            router.warm_up("acme/model")
    assert scripted_provider.requests() == []


@pytest.mark.parametrize("name", ["generic", "scripted/", "/generic", "acme/model"])
def test_router_rejects_bad_model_names(scripted_settings: Settings, name: str) -> None:
    with LLMRouter(scripted_settings) as router, pytest.raises(ConfigError):
        router.complete(name, MESSAGES)


def test_router_rebuilds_clients_after_close(scripted_settings: Settings) -> None:
    router = LLMRouter(scripted_settings)
    first = router.client("scripted")
    router.close()
    try:
        assert router.client("scripted") is not first
        assert router.complete("scripted/generic", MESSAGES).text == "The secret code is ZX81."
    finally:
        router.close()


def test_router_under_many_threads_builds_one_client_and_counts_every_call(
    scripted_settings: Settings, scripted_provider: ScriptedProvider
) -> None:
    builds: list[str] = []
    lock = threading.Lock()

    def counting_factory(settings: Settings) -> LLMClient:
        with lock:
            builds.append("scripted")
        return CLIENT_FACTORIES["scripted"](settings)

    threads_n, calls_each = 32, 5
    start = threading.Barrier(threads_n)
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    router = LLMRouter(scripted_settings, factories={"scripted": counting_factory})

    def worker(index: int) -> None:
        try:
            start.wait()
            for call in range(calls_each):
                prompt = f"Question: which call?\n\nPart 1 of 1:\nThis is call {index}-{call}."
                done = router.complete("scripted/generic", [{"role": "user", "content": prompt}])
                assert done.text == f"This is call {index}-{call}."
                with lock:
                    results.append((done.input_tokens, done.output_tokens))
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        router.close()

    assert errors == []
    assert builds == ["scripted"]
    entry = scripted_provider.ledger()["scripted/generic"]
    assert entry.calls == threads_n * calls_each == len(results)
    assert entry.input_tokens == sum(i for i, _ in results)
    assert entry.output_tokens == sum(o for _, o in results)


# ---- odd but well-formed JSON (OpenAI wire format) ---------------------------------------


class _CannedHandler(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the server's canned (content type, body)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        content_type, body = self.server.canned  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def canned_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _CannedHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _chat(message: object, usage: object = None) -> bytes:
    usage = usage if usage is not None else {"prompt_tokens": 3, "completion_tokens": 1}
    return json.dumps({"choices": [{"index": 0, "message": message}], "usage": usage}).encode()


@pytest.mark.parametrize(
    ("content_type", "body", "reason"),
    [
        ("text/plain", b"hello", "not a chat completion"),
        ("application/json", b"[1, 2]", "not a chat completion"),
        ("application/json", b'{"choices": [], "usage": {}}', "no choices"),
        ("application/json", b'{"choices": ["x"]}', "no choices"),
        ("application/json", _chat("text"), "a choice without a message"),
        ("application/json", _chat({"content": 5}), "message content is not text"),
        ("application/json", _chat({"content": "hi"}, {"prompt_tokens": 3}), "no token usage"),
        (
            "application/json",
            _chat({"content": "hi"}, {"prompt_tokens": True, "completion_tokens": 1}),
            "no token usage",
        ),
        ("application/json", _chat({"content": "hi"}, "lots"), "no token usage"),
    ],
)
def test_a_completion_missing_what_we_need_is_malformed(
    canned_server: http.server.HTTPServer, content_type: str, body: bytes, reason: str
) -> None:
    canned_server.canned = (content_type, body)  # type: ignore[attr-defined]
    host, port = canned_server.server_address[:2]
    client = build_client("scripted", Settings(scripted_base_url=f"http://{host!s}:{port}/v1"))
    try:
        with pytest.raises(ProviderRetryableError, match=f"malformed.*{reason}"):
            client.complete(MESSAGES, model="any", max_output_tokens=10)
    finally:
        client.close()


def test_a_refusal_is_the_completion_text(canned_server: http.server.HTTPServer) -> None:
    canned_server.canned = ("application/json", _chat({"content": None, "refusal": "No."}))  # type: ignore[attr-defined]
    host, port = canned_server.server_address[:2]
    client = build_client("scripted", Settings(scripted_base_url=f"http://{host!s}:{port}/v1"))
    try:
        completion = client.complete(MESSAGES, model="any", max_output_tokens=10)
    finally:
        client.close()
    assert (completion.text, completion.input_tokens, completion.output_tokens) == ("No.", 3, 1)
