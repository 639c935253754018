"""Background responses (OpenAI's Responses API) through our client and the official SDK,
over real HTTP, against the scripted provider."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import openai
import pytest
import redis

from rlm_jobs.clients import make_client
from rlm_jobs.clients.base import ChatMessage, Standing
from rlm_jobs.clients.calls import CallContext
from rlm_jobs.clients.router import LLMRouter
from rlm_jobs.config import Settings
from rlm_jobs.errors import CallAbandoned, JobStopped, ProviderRetryableError
from rlm_jobs.providers import BatchBudgets, ProviderControls
from rlm_jobs.testing import ScriptedProvider
from tests.support import wait_for

SUB: list[ChatMessage] = [{"role": "user", "content": "hello there"}]
ROOT: list[ChatMessage] = [
    {"role": "system", "content": "You are the root model."},
    {"role": "user", "content": "hello there"},
]


class Handle:
    """A ``ResponseHandle`` in memory, remembering every id it was given; ``owned`` False
    plays a call given up or taken over meanwhile; ``then`` is where the call stands once
    an id was kept (given up, or taken over, while the response is generated)."""

    def __init__(
        self, response_id: str | None = None, *, owned: bool = True, then: Standing = "ours"
    ) -> None:
        self.response_id = response_id
        self.owned = owned
        self.then = then
        self.kept: list[str | None] = []

    def keep(self, response_id: str | None) -> bool:
        self.response_id = response_id
        self.kept.append(response_id)
        return self.owned

    def standing(self) -> Standing:
        return self.then if self.kept else "ours"


@pytest.fixture
def sdk(scripted_provider: ScriptedProvider) -> Iterator[openai.OpenAI]:
    """The official SDK, for what our client does not do (create a response, look at one)."""
    with openai.OpenAI(api_key="unused", base_url=scripted_provider.url) as client:
        yield client


def calls(scripted: ScriptedProvider, model: str = "scripted/generic") -> tuple[int, int]:
    entry = scripted.ledger().get(model)
    return (entry.calls, entry.retrievals) if entry is not None else (0, 0)


@pytest.mark.parametrize("provider", ["scripted", "openai"])
def test_a_background_call_is_created_once_and_polled_until_done(
    provider: str, scripted_settings: Settings, scripted_provider: ScriptedProvider
) -> None:
    scripted_provider.configure(sub_latency_s=1.0)
    client = make_client(provider, scripted_settings)
    handle = Handle()
    done = client.complete(SUB, model="generic", max_output_tokens=100, handle=handle)
    assert done.text == "hello there"
    assert (done.input_tokens, done.output_tokens) == (3, 3)
    assert handle.kept == [handle.response_id] and handle.response_id.startswith("resp_")
    paid, polls = calls(scripted_provider)
    assert paid == 1 and polls >= 2  # at least one poll found it still in progress
    assert [r.wire for r in scripted_provider.requests()] == ["responses"]
    client.close()


def test_a_handle_holding_a_response_fetches_it_without_paying_again(
    scripted_settings: Settings, scripted_provider: ScriptedProvider
) -> None:
    scripted_provider.configure(sub_latency_s=0.3)
    first = make_client("scripted", scripted_settings)
    handle = Handle()
    answer = first.complete(SUB, model="generic", max_output_tokens=100, handle=handle)
    first.close()
    # Another client (another worker) given the same id gets the same answer, unpaid.
    second = make_client("scripted", scripted_settings)
    again = second.complete(
        SUB, model="generic", max_output_tokens=100, handle=Handle(handle.response_id)
    )
    assert again == answer
    assert calls(scripted_provider)[0] == 1
    assert len(scripted_provider.requests()) == 1
    second.close()


def test_a_response_the_provider_no_longer_has_is_asked_afresh(
    scripted_settings: Settings, scripted_provider: ScriptedProvider
) -> None:
    settings = scripted_settings.model_copy(update={"background_calls": "all"})
    handle = Handle("resp_the_provider_never_made")
    with LLMRouter(settings) as router:
        done = router.complete("scripted/generic", SUB, handle=handle, context=CallContext())
    assert done.text == "hello there"
    # Forgotten on the 404, then the router's retry created a new one: paid once.
    assert handle.kept[0] is None and handle.response_id not in (
        None,
        "resp_the_provider_never_made",
    )
    assert calls(scripted_provider)[0] == 1


def test_a_response_not_done_in_time_is_cancelled_and_forgotten(
    scripted_settings: Settings, scripted_provider: ScriptedProvider, sdk: openai.OpenAI
) -> None:
    scripted_provider.configure(sub_latency_s=30)
    settings = scripted_settings.model_copy(update={"request_timeout_s": 0.5})
    settings = settings.model_copy(update={"max_retries": 0})
    client = make_client("scripted", settings)
    handle = Handle()
    with pytest.raises(ProviderRetryableError, match=r"not done within 0\.5s") as caught:
        client.complete(SUB, model="generic", max_output_tokens=100, handle=handle)
    assert caught.value.code == "timeout"
    created = handle.kept[0]
    assert created is not None and handle.response_id is None
    assert sdk.responses.retrieve(created).status == "cancelled"
    client.close()


class GivenUpAtTheDeadline(Handle):
    """A call given up as its deadline passed: forgetting its response finds it gone."""

    def keep(self, response_id: str | None) -> bool:
        super().keep(response_id)
        return response_id is not None


def test_a_response_not_done_in_time_whose_call_was_given_up_is_cancelled(
    scripted_settings: Settings, scripted_provider: ScriptedProvider, sdk: openai.OpenAI
) -> None:
    scripted_provider.configure(sub_latency_s=30)
    settings = scripted_settings.model_copy(update={"request_timeout_s": 0.5, "max_retries": 0})
    client = make_client("scripted", settings)
    handle = GivenUpAtTheDeadline()
    with pytest.raises(CallAbandoned):
        client.complete(SUB, model="generic", max_output_tokens=100, handle=handle)
    # Nobody will fetch it: the provider stops generating it
    created = handle.kept[0]
    assert created is not None
    assert sdk.responses.retrieve(created).status == "cancelled"
    client.close()


@pytest.mark.parametrize(
    ("setting", "root_wire", "sub_wire"),
    [
        ("none", "openai", "openai"),
        ("root", "responses", "openai"),
        ("all", "responses", "responses"),
    ],
)
def test_background_calls_says_which_calls_are_background_responses(
    setting: str,
    root_wire: str,
    sub_wire: str,
    scripted_settings: Settings,
    scripted_provider: ScriptedProvider,
) -> None:
    settings = scripted_settings.model_copy(update={"background_calls": setting})
    with LLMRouter(settings) as router:
        router.complete("scripted/generic", ROOT, context=CallContext(kind="root"), handle=Handle())
        router.complete("scripted/generic", SUB, context=CallContext(kind="sub"), handle=Handle())
    assert [r.wire for r in scripted_provider.requests()] == [root_wire, sub_wire]


def test_an_anthropic_call_with_a_handle_is_an_ordinary_call(
    scripted_settings: Settings, scripted_provider: ScriptedProvider
) -> None:
    client = make_client("anthropic", scripted_settings)
    handle = Handle()
    done = client.complete(SUB, model="generic", max_output_tokens=100, handle=handle)
    assert done.text == "hello there"
    assert handle.kept == []
    assert [r.wire for r in scripted_provider.requests()] == ["anthropic"]
    client.close()


def test_the_official_sdk_reads_the_scripted_responses(
    scripted_provider: ScriptedProvider, sdk: openai.OpenAI
) -> None:
    scripted_provider.configure(sub_latency_s=1.0)
    queued = sdk.responses.create(model="scripted/generic", input="hello there", background=True)
    assert queued.status == "queued" and queued.background
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve("resp_unknown")
    assert sdk.responses.retrieve(queued.id).status == "in_progress"
    wait_for(lambda: sdk.responses.retrieve(queued.id).status != "in_progress", 10, "it to end")
    done = sdk.responses.retrieve(queued.id)
    assert done.status == "completed"
    assert done.output_text == "hello there"
    assert done.usage is not None and done.usage.output_tokens == 3
    # Without background the call waits and answers at once, as the real API does.
    direct = sdk.responses.create(model="scripted/generic", input="hello there")
    assert direct.status == "completed" and direct.output_text == "hello there"
    assert calls(scripted_provider)[0] == 2
    with pytest.raises(openai.BadRequestError, match="at least 16"):
        sdk.responses.create(model="scripted/generic", input="hi", max_output_tokens=1)


def test_a_call_no_longer_ours_when_created_cancels_its_response(
    scripted_settings: Settings, scripted_provider: ScriptedProvider, sdk: openai.OpenAI
) -> None:
    scripted_provider.configure(sub_latency_s=30)
    client = make_client("scripted", scripted_settings)
    handle = Handle(owned=False)
    with pytest.raises(CallAbandoned):
        client.complete(SUB, model="generic", max_output_tokens=100, handle=handle)
    (created,) = handle.kept
    assert created is not None
    assert sdk.responses.retrieve(created).status == "cancelled"
    client.close()


@pytest.mark.parametrize(
    ("then", "says", "status", "cancellations"),
    [
        # Given up by its job (cancelled, or past one of its limits): nobody wants it
        ("gone", "cancelled", "cancelled", 1),
        # Taken over by another worker, who may be polling it: it goes on at the provider
        ("theirs", "new owner", "in_progress", 0),
    ],
)
def test_a_call_no_longer_ours_while_its_response_is_generated_stops_at_the_next_poll(
    then: Standing,
    says: str,
    status: str,
    cancellations: int,
    scripted_settings: Settings,
    scripted_provider: ScriptedProvider,
    sdk: openai.OpenAI,
) -> None:
    # Given a response that takes 30 s, and a call that stops being ours once the provider
    # accepted it
    scripted_provider.configure(sub_latency_s=30)
    client = make_client("scripted", scripted_settings)
    handle = Handle(then=then)
    started = time.monotonic()
    # Then the worker stops at its next poll, and cancels the response only if it is gone
    with pytest.raises(CallAbandoned, match=says):
        client.complete(SUB, model="generic", max_output_tokens=100, handle=handle)
    assert time.monotonic() - started < 10
    (created,) = handle.kept
    assert created is not None
    assert sdk.responses.retrieve(created).status == status
    assert scripted_provider.ledger()["scripted/generic"].cancellations == cancellations
    client.close()


def test_failed_polls_are_polled_again_without_spending_a_retry(
    scripted_settings: Settings,
    scripted_provider: ScriptedProvider,
    sdk: openai.OpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a response the provider is generating, and its next three polls failing
    scripted_provider.configure(sub_latency_s=1.0)
    created = sdk.responses.create(model="scripted/generic", input="hello there", background=True)
    for kind in ("500", "429", "malformed"):
        scripted_provider.inject(kind, model="scripted/generic")
    # When a router with no retries at all fetches it
    settings = scripted_settings.model_copy(update={"max_retries": 0, "background_calls": "all"})
    with LLMRouter(settings) as router:
        done = router.complete("scripted/generic", SUB, handle=Handle(created.id))
    # Then it gets the answer, paid once, after polling past the three failures
    assert done.text == "hello there"
    assert calls(scripted_provider)[0] == 1
    failed = [r.getMessage() for r in caplog.records if "polling on" in r.getMessage()]
    assert [m.split("(scripted ", 1)[1][:12] for m in failed] == [
        "returned HTT",
        "returned HTT",
        "sent a malfo",
    ]


IN_BATCH = CallContext(batch_id="spent", kind="sub")


@contextlib.contextmanager
def router_past_a_spent_budget(settings: Settings, client: redis.Redis) -> Iterator[LLMRouter]:
    """A router for background calls whose first call in ``IN_BATCH`` spent its budget."""
    settings = settings.model_copy(update={"background_calls": "all"})
    BatchBudgets(client).set("spent", max_cost_usd=1e-9, max_tokens=None)
    controls = ProviderControls.from_settings(client, settings)
    with LLMRouter(settings, controls=controls) as router:
        router.complete("scripted/generic", SUB, context=IN_BATCH, handle=Handle())
        yield router


def test_a_response_already_asked_for_is_fetched_past_a_spent_budget(
    scripted_settings: Settings,
    scripted_provider: ScriptedProvider,
    sdk: openai.OpenAI,
    redis_client: redis.Redis,
) -> None:
    with router_past_a_spent_budget(scripted_settings, redis_client) as router:
        # A new call is refused once the budget is spent...
        with pytest.raises(JobStopped):
            router.complete("scripted/generic", SUB, context=IN_BATCH, handle=Handle())
        # ...but one the provider is already generating (a call taken over) is paid for:
        # it is fetched and counted against the batch
        left = sdk.responses.create(model="scripted/generic", input="hello there", background=True)
        done = router.complete("scripted/generic", SUB, context=IN_BATCH, handle=Handle(left.id))
    assert done.text == "hello there"
    state = BatchBudgets(redis_client).state("spent")
    assert state is not None and state.tokens == 2 * (done.input_tokens + done.output_tokens)


def test_a_response_taken_over_that_is_gone_is_not_asked_anew_past_a_spent_budget(
    scripted_settings: Settings, scripted_provider: ScriptedProvider, redis_client: redis.Redis
) -> None:
    with router_past_a_spent_budget(scripted_settings, redis_client) as router:
        # A call taken over whose response the provider no longer has (expired): fetching
        # it fails, and asking anew would be a new call, which the spent budget refuses
        handle = Handle("resp_the_provider_never_made")
        with pytest.raises(JobStopped, match="budget"):
            router.complete("scripted/generic", SUB, context=IN_BATCH, handle=handle)
    assert handle.kept == [None]
    assert calls(scripted_provider)[0] == 1


def test_a_hung_poll_is_cut_at_the_deadline(
    scripted_settings: Settings, scripted_provider: ScriptedProvider, sdk: openai.OpenAI
) -> None:
    scripted_provider.configure(sub_latency_s=30)
    created = sdk.responses.create(model="scripted/generic", input="hello there", background=True)
    scripted_provider.inject("hang", model="scripted/generic", hang_s=20)
    settings = scripted_settings.model_copy(update={"request_timeout_s": 1.0, "max_retries": 0})
    client = make_client("scripted", settings)
    started = time.monotonic()
    with pytest.raises(ProviderRetryableError) as caught:
        client.complete(SUB, model="generic", max_output_tokens=100, handle=Handle(created.id))
    # The poll held by the provider gave up with the call's deadline, not 20 s later
    assert time.monotonic() - started < 10
    assert caught.value.code == "timeout"
    assert sdk.responses.retrieve(created.id).status == "cancelled"
    client.close()
