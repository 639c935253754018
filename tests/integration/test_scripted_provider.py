"""The scripted provider as a server: wire formats as the SDKs see them, control endpoints,
latency, faults, concurrency, and the standalone command."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import openai
import pytest

from rlm_jobs import prompts
from rlm_jobs.models import ContextRef
from rlm_jobs.testing import ScriptedProvider

SUB_PROMPT = "Question: Where is the key?\n\nPart 1 of 1:\nThe key is under the mat. Rain."


def root_messages() -> list[Any]:
    ref = ContextRef(sha256="0" * 64, kind="str", length=5000, total_chars=5000)
    return [
        {"role": "system", "content": prompts.system_prompt(ref)},
        {"role": "user", "content": prompts.first_user_message("Where is the key?", ref)},
    ]


def http(
    url: str, body: object | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={**(headers or {})})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


@pytest.fixture
def openai_sdk(scripted_provider: ScriptedProvider) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(api_key="k", base_url=scripted_provider.url, max_retries=0, timeout=10)
    yield client
    client.close()


@pytest.fixture
def anthropic_sdk(scripted_provider: ScriptedProvider) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(
        api_key="k", base_url=scripted_provider.root_url, max_retries=0, timeout=10
    )
    yield client
    client.close()


# ---- wire formats as the SDKs parse them ----------------------------------------------------


def test_openai_wire_format(openai_sdk: openai.OpenAI) -> None:
    response = openai_sdk.chat.completions.create(
        model="scripted/generic", messages=[{"role": "user", "content": SUB_PROMPT}]
    )
    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert response.model == "scripted/generic"
    choice = response.choices[0]
    assert choice.message.content == "The key is under the mat."
    assert (choice.message.role, choice.finish_reason) == ("assistant", "stop")
    assert response.usage is not None
    assert response.usage.prompt_tokens == -(-len(SUB_PROMPT) // 4)
    assert response.usage.completion_tokens == -(-len("The key is under the mat.") // 4)
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )


def test_anthropic_wire_format(anthropic_sdk: anthropic.Anthropic) -> None:
    response = anthropic_sdk.messages.create(
        model="generic",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": [{"type": "text", "text": SUB_PROMPT}]}],
    )
    assert response.id.startswith("msg_")
    assert (response.type, response.role, response.model) == ("message", "assistant", "generic")
    assert response.content[0].type == "text"
    assert response.content[0].text == "The key is under the mat."
    assert (response.stop_reason, response.stop_sequence) == ("end_turn", None)
    assert response.usage.input_tokens == -(-len("Be brief." + SUB_PROMPT) // 4)


def test_max_tokens_cuts_the_reply_like_a_real_api(
    openai_sdk: openai.OpenAI, anthropic_sdk: anthropic.Anthropic
) -> None:
    messages = root_messages()
    cut = openai_sdk.chat.completions.create(
        model="scripted/chatty", messages=messages, max_completion_tokens=10
    )
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 10
    assert len(cut.choices[0].message.content or "") == 40
    short = anthropic_sdk.messages.create(
        model="chatty",
        max_tokens=10,
        system=messages[0]["content"],
        messages=[{"role": "user", "content": messages[1]["content"]}],
    )
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 10


def test_root_calls_get_repl_code(
    openai_sdk: openai.OpenAI, scripted_provider: ScriptedProvider
) -> None:
    response = openai_sdk.chat.completions.create(
        model="scripted/generic", messages=root_messages()
    )
    assert "```repl" in (response.choices[0].message.content or "")
    assert [r.role for r in scripted_provider.requests()] == ["root"]


def test_unknown_model_gets_each_providers_404(scripted_provider: ScriptedProvider) -> None:
    body = {"model": "gpt-9", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    status, openai_error = http(f"{scripted_provider.url}/chat/completions", body)
    assert status == 404
    assert openai_error["error"]["code"] == "model_not_found"
    assert "gpt-9" in openai_error["error"]["message"]
    status, anthropic_error = http(f"{scripted_provider.root_url}/v1/messages", body)
    assert status == 404
    assert anthropic_error["type"] == "error"
    assert anthropic_error["error"]["type"] == "not_found_error"


def test_bad_requests_get_400(scripted_provider: ScriptedProvider) -> None:
    status, error = http(f"{scripted_provider.url}/chat/completions", {"model": "generic"})
    assert status == 400 and "messages" in error["error"]["message"]
    no_max = {"model": "generic", "messages": [{"role": "user", "content": "hi"}]}
    status, error = http(f"{scripted_provider.root_url}/v1/messages", no_max)
    assert status == 400 and "max_tokens" in error["error"]["message"]


# ---- control: ledger, requests, reset, config, faults ----------------------------------------


def test_control_endpoints(scripted_provider: ScriptedProvider) -> None:
    base = scripted_provider.root_url
    status, health = http(f"{base}/_scripted/health")
    assert status == 200 and "generic" in health["policies"]

    chat = {"model": "generic", "messages": [{"role": "user", "content": SUB_PROMPT}]}
    http(f"{scripted_provider.url}/chat/completions", chat, {"X-RLM-Worker": "worker-7"})
    status, ledger = http(f"{base}/_scripted/ledger")
    assert ledger["scripted/generic"]["calls"] == 1
    status, requests = http(f"{scripted_provider.url}/_scripted/requests")
    assert [(r["worker"], r["role"], r["outcome"]) for r in requests] == [("worker-7", "sub", "ok")]

    status, fault = http(f"{base}/_scripted/faults", {"kind": "500", "count": 2})
    assert (status, fault) == (200, {"pending": 2})
    status, _ = http(f"{scripted_provider.url}/chat/completions", chat)
    assert status == 500

    status, config = http(f"{base}/_scripted/config", {"sub_latency_s": 0.25})
    assert config["sub_latency_s"] == 0.25 and scripted_provider.config.sub_latency_s == 0.25
    status, _ = http(f"{base}/_scripted/config", {"no_such_setting": 1})
    assert status == 400
    status, _ = http(f"{base}/_scripted/faults", {"kind": "teapot"})
    assert status == 400

    assert http(f"{base}/_scripted/reset", {})[0] == 200
    assert scripted_provider.ledger() == {} and scripted_provider.requests() == []
    # Reset forgot the pending fault but kept the latency.
    assert http(f"{scripted_provider.url}/chat/completions", chat)[0] == 200
    assert scripted_provider.config.sub_latency_s == 0.25


def test_faults_are_used_in_order_and_by_model(
    openai_sdk: openai.OpenAI, scripted_provider: ScriptedProvider
) -> None:
    scripted_provider.inject("400", model="scripted/needle")
    scripted_provider.inject("401")
    scripted_provider.inject("500", model="needle")
    messages: list[Any] = [{"role": "user", "content": SUB_PROMPT}]

    def status_of(model: str) -> int:
        try:
            openai_sdk.chat.completions.create(model=model, messages=messages)
        except openai.APIStatusError as error:
            return error.status_code
        return 200

    assert [status_of(m) for m in ("generic", "needle", "needle", "generic", "needle")] == [
        401,
        400,
        500,
        200,
        200,
    ]


def test_latency_applies_to_root_and_sub_calls_separately(
    openai_sdk: openai.OpenAI, scripted_provider: ScriptedProvider
) -> None:
    scripted_provider.configure(root_latency_s=0.4, sub_latency_s=0.1)
    openai_sdk.chat.completions.create(model="generic", messages=root_messages())
    openai_sdk.chat.completions.create(
        model="generic", messages=[{"role": "user", "content": SUB_PROMPT}]
    )
    root, sub = scripted_provider.requests()
    assert (root.role, sub.role) == ("root", "sub")
    assert root.latency_s >= 0.4
    assert 0.1 <= sub.latency_s < 0.4


def test_wait_for_requests_has_a_deadline(scripted_provider: ScriptedProvider) -> None:
    with pytest.raises(TimeoutError, match="saw 0 requests"):
        scripted_provider.wait_for_requests(1, timeout_s=0.05)


def test_hang_is_released_by_stop() -> None:
    provider = ScriptedProvider(hang_s=60).start()
    provider.inject("hang")
    body = json.dumps({"model": "generic", "messages": [{"role": "user", "content": "x"}]})
    errors: list[BaseException] = []

    def call() -> None:
        request = urllib.request.Request(
            f"{provider.url}/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=30).close()
        except Exception as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    provider.wait_for_requests(1)
    started = time.monotonic()
    provider.stop()
    caller.join(timeout=10)
    assert not caller.is_alive()
    assert time.monotonic() - started < 10
    assert len(errors) == 1


# ---- concurrency ---------------------------------------------------------------------------


def test_serves_hundreds_of_concurrent_requests(scripted_provider: ScriptedProvider) -> None:
    scripted_provider.configure(sub_latency_s=0.3)
    n = 300
    sdk = openai.OpenAI(
        api_key="k",
        base_url=scripted_provider.url,
        max_retries=0,
        timeout=30,
    )

    def one(i: int) -> str:
        prompt = f"Question: which number is this?\n\nPart 1 of 1:\nThis is number {i}."
        response = sdk.chat.completions.create(
            model="generic",
            messages=[{"role": "user", "content": prompt}],
            extra_headers={"X-RLM-Worker": f"w{i % 3}"},
        )
        return response.choices[0].message.content or ""

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=n) as pool:
            answers = list(pool.map(one, range(n)))
    finally:
        sdk.close()
    elapsed = time.monotonic() - started

    assert answers == [f"This is number {i}." for i in range(n)]
    # Served one at a time this would take n * 0.3 s = 90 s.
    assert elapsed < 15
    assert scripted_provider.ledger()["scripted/generic"].calls == n
    assert {r.worker for r in scripted_provider.requests()} == {"w0", "w1", "w2"}


# ---- standalone ------------------------------------------------------------------------------


def test_standalone_command_prints_its_url_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlm_jobs.testing.provider",
            "--port",
            "0",
            "--sub-latency-s",
            "0.05",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        status, config = http(f"{url}/_scripted/config")
        assert status == 200 and config["sub_latency_s"] == 0.05
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
