"""The response cache, batch budgets and the router's use of them: real Redis, the scripted
provider over real HTTP, the official SDKs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis

from rlm_jobs import keys
from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.clients.calls import CallContext
from rlm_jobs.clients.router import LLMRouter
from rlm_jobs.config import RateLimit, Settings
from rlm_jobs.errors import JobStopped, ProviderRetryableError, SpecError
from rlm_jobs.models import JobStatus
from rlm_jobs.providers import BatchBudgets, CachedReply, ProviderControls, ResponseCache
from rlm_jobs.testing import ScriptedProvider
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)

MODEL = "scripted/generic"


def ask(text: str) -> list[ChatMessage]:
    return [{"role": "user", "content": f"Question: which call?\n\nPart 1 of 1:\nThis is {text}."}]


@dataclass
class RecordingObserver:
    """A ``CallObserver`` that keeps what it was told."""

    done: list[tuple[str, str, int, int, float, bool]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    waits: list[tuple[str, float]] = field(default_factory=list)

    def call_done(
        self, model: str, kind: str, input_tokens: int, output_tokens: int, cost_usd: float,
        cached: bool,
    ) -> None:  # fmt: skip
        self.done.append((model, kind, input_tokens, output_tokens, cost_usd, cached))

    def provider_error(self, model: str, code: str) -> None:
        self.errors.append((model, code))

    def rate_limit_wait(self, model: str, seconds: float) -> None:
        self.waits.append((model, seconds))


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture
def make_router(
    scripted_settings: Settings, redis_client: redis.Redis, observer: RecordingObserver
) -> Iterator[type[LLMRouter]]:
    routers: list[LLMRouter] = []

    def factory(**update: object) -> LLMRouter:
        settings = scripted_settings.model_copy(update=update)
        router = LLMRouter(
            settings,
            controls=ProviderControls.from_settings(redis_client, settings),
            observer=observer,
        )
        routers.append(router)
        return router

    yield factory  # type: ignore[misc]
    for router in routers:
        router.close()


# ---- the cache on its own --------------------------------------------------------------


def reply(n: int, size: int = 100) -> CachedReply:
    return CachedReply(text=f"{n:03d}" + "x" * (size - 3), input_tokens=n, output_tokens=1)


def test_cached_replies_round_trip_and_count_their_bytes_once(redis_client: redis.Redis) -> None:
    cache = ResponseCache(redis_client, ttl_s=60, max_bytes=10_000)
    assert cache.get("a" * 64) is None
    cache.put("a" * 64, reply(1))
    cache.put("a" * 64, reply(1))  # a second worker answered the same request
    assert cache.get("a" * 64) == reply(1)
    size = len(reply(1).model_dump_json())
    stats = cache.stats()
    assert (stats.entries, stats.bytes) == (1, size)
    assert 0 < redis_client.pttl(keys.cache_entry("a" * 64)) <= 60_000


def test_past_its_byte_cap_the_cache_evicts_the_oldest(redis_client: redis.Redis) -> None:
    size = len(reply(0).model_dump_json())
    cache = ResponseCache(redis_client, ttl_s=60, max_bytes=3 * size + size // 2)
    digests = [f"{n:064d}" for n in range(5)]
    for n, digest in enumerate(digests):
        cache.put(digest, reply(n))
    assert [cache.get(d) is not None for d in digests] == [False, False, True, True, True]
    stats = cache.stats()
    assert stats.entries == 3 and stats.bytes == 3 * size <= 3 * size + size // 2
    # A reply larger than the whole cap is not stored at all.
    cache.put("f" * 64, reply(9, size=10 * size))
    assert cache.get("f" * 64) is None and cache.stats().entries == 3


def test_expired_replies_are_gone_and_leave_no_bytes_behind(redis_client: redis.Redis) -> None:
    cache = ResponseCache(redis_client, ttl_s=0.3, max_bytes=10_000)
    cache.put("1" * 64, reply(1))
    wait_for(lambda: cache.get("1" * 64) is None, 5, "the cached reply to expire")
    cache.put("2" * 64, reply(2))  # a later write sweeps the expired entry's index row
    stats = cache.stats()
    assert (stats.entries, stats.bytes) == (1, len(reply(2).model_dump_json()))


# ---- the router with the cache ----------------------------------------------------------


def test_a_repeated_request_is_answered_from_the_cache_for_free(
    make_router, scripted_provider: ScriptedProvider, observer: RecordingObserver
) -> None:  # type: ignore[no-untyped-def]
    router = make_router()
    on = CallContext(job_id="j1", kind="sub", cache=True)
    first = router.complete(MODEL, ask("call 1"), context=on)
    second = router.complete(MODEL, ask("call 1"), context=CallContext(job_id="j2", cache=True))
    assert len(scripted_provider.requests()) == 1
    assert (first.cached, second.cached) == (False, True)
    assert second.text == first.text == "This is call 1."
    assert second.cost_usd == 0.0 and second.cached_cost_usd == pytest.approx(first.cost_usd)
    assert (second.input_tokens, second.output_tokens) == (first.input_tokens, first.output_tokens)
    tokens = (first.input_tokens, first.output_tokens)
    assert observer.done == [
        (MODEL, "sub", *tokens, first.cost_usd, False),
        (MODEL, "root", *tokens, 0.0, True),
    ]
    # Another output cap is another request; a call that did not ask is not cached.
    router.complete(MODEL, ask("call 1"), 7, context=on)
    router.complete(MODEL, ask("call 1"))
    assert len(scripted_provider.requests()) == 3


def test_the_deployment_may_turn_the_cache_on_for_every_job(
    make_router, scripted_provider: ScriptedProvider
) -> None:  # type: ignore[no-untyped-def]
    router = make_router(cache=True)
    router.complete(MODEL, ask("call 2"))
    assert router.complete(MODEL, ask("call 2")).cached
    # A job that says no is still not answered from it.
    assert not router.complete(MODEL, ask("call 2"), context=CallContext(cache=False)).cached
    assert len(scripted_provider.requests()) == 2


def test_failed_calls_are_not_cached(make_router, scripted_provider: ScriptedProvider) -> None:  # type: ignore[no-untyped-def]
    router = make_router(max_retries=0)
    scripted_provider.inject("500", 1)
    with pytest.raises(ProviderRetryableError):
        router.complete(MODEL, ask("call 3"), context=CallContext(cache=True))
    assert not router.complete(MODEL, ask("call 3"), context=CallContext(cache=True)).cached


# ---- the router and the observer ---------------------------------------------------------


def test_every_failed_attempt_and_every_wait_is_observed(
    make_router, scripted_provider: ScriptedProvider, observer: RecordingObserver,
    redis_client: redis.Redis,
) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    router = make_router(rate_limits={"scripted": RateLimit()})
    scripted_provider.inject("500", 1)
    scripted_provider.inject("429", 1, retry_after_s=0.5)
    done = router.complete(MODEL, ask("call 4"))
    assert done.text == "This is call 4."
    assert observer.errors == [(MODEL, "500"), (MODEL, "429")]
    # The 429's Retry-After became a cool-down the retry waited out as a rate-limit wait.
    assert len(observer.waits) == 1 and observer.waits[0][1] >= 0.3
    assert done.rate_limited_s == pytest.approx(observer.waits[0][1])
    outcomes = [r.outcome for r in scripted_provider.requests()]
    assert outcomes == ["500", "429", "ok"]
    requests = scripted_provider.requests()
    assert requests[2].timestamp - requests[1].timestamp >= 0.45
    assert observer.done[-1][-1] is False


def test_a_timeout_is_observed_as_one(
    make_router, scripted_provider: ScriptedProvider, observer: RecordingObserver
) -> None:  # type: ignore[no-untyped-def]
    router = make_router(request_timeout_s=0.3, max_retries=0)
    scripted_provider.inject("hang", 1, hang_s=1.0)
    with pytest.raises(ProviderRetryableError):
        router.complete(MODEL, ask("call 5"))
    assert observer.errors == [(MODEL, "timeout")]


# ---- batch budgets ------------------------------------------------------------------------


def test_a_spent_batch_starts_no_new_call(
    make_router, scripted_provider: ScriptedProvider, redis_client: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    BatchBudgets(redis_client).set("b1", max_cost_usd=1e-9, max_tokens=None)
    router = make_router()
    in_batch = CallContext(job_id="j", batch_id="b1", kind="sub")
    first = router.complete(MODEL, ask("call 6"), context=in_batch)  # under the cap: it runs
    with pytest.raises(JobStopped, match=r"batch b1 spent \$.* budget") as stopped:
        router.complete(MODEL, ask("call 7"), context=in_batch)
    assert stopped.value.status is JobStatus.BUDGET_EXCEEDED
    assert len(scripted_provider.requests()) == 1
    state = BatchBudgets(redis_client).state("b1")
    assert state is not None
    assert state.tokens == first.input_tokens + first.output_tokens
    assert state.cost_usd == pytest.approx(first.cost_usd)
    assert redis_client.hget(keys.batch_budget("b1"), "exhausted_at")
    # Other batches and jobs outside batches are not held back.
    router.complete(MODEL, ask("call 8"), context=CallContext(batch_id="b2"))
    router.complete(MODEL, ask("call 9"))
    assert len(scripted_provider.requests()) == 3


def test_a_token_cap_counts_every_call_of_the_batch(make_router, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    budgets = BatchBudgets(redis_client)
    budgets.set("b3", max_cost_usd=None, max_tokens=30)
    router = make_router()
    ctx = CallContext(batch_id="b3")
    used = 0
    with pytest.raises(JobStopped, match="tokens"):
        for n in range(10):
            done = router.complete(MODEL, ask(f"call {n}"), context=ctx)
            used += done.input_tokens + done.output_tokens
    state = budgets.state("b3")
    assert state is not None and state.tokens == used and 30 <= used < 30 + 30
    # Raising the cap lets the batch call again.
    budgets.set("b3", max_cost_usd=None, max_tokens=10_000)
    router.complete(MODEL, ask("call 11"), context=ctx)


def test_spend_is_counted_exactly_under_concurrency(redis_client: redis.Redis) -> None:
    budgets = BatchBudgets(redis_client)
    budgets.set("b4", max_cost_usd=100.0, max_tokens=None)

    def spend() -> None:
        for _ in range(50):
            budgets.add("b4", 3, 0.001)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    state = budgets.state("b4")
    assert state is not None
    assert state.tokens == 8 * 50 * 3 and state.cost_usd == pytest.approx(0.4)


def test_bad_budgets_are_refused_before_anything_is_written(redis_client: redis.Redis) -> None:
    budgets = BatchBudgets(redis_client)
    with pytest.raises(SpecError, match="above \\$0"):
        budgets.set("b5", max_cost_usd=0.0, max_tokens=None)
    with pytest.raises(SpecError, match="at least 1"):
        budgets.set("b5", max_cost_usd=None, max_tokens=0)
    assert not redis_client.exists(keys.batch_budget("b5"))
    budgets.set("b5", max_cost_usd=None, max_tokens=None)  # no caps: no budget
    assert budgets.state("b5") is None and budgets.exhausted("b5") is None
