"""The cluster-wide rate limiter against a real Redis: spacing, tokens, cool-downs.

Two ``RateLimiter`` objects on two connections stand for two worker processes: all they
share is Redis.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
import redis

from rlm_jobs import keys
from rlm_jobs.config import RateLimit
from rlm_jobs.errors import JobStopped
from rlm_jobs.models import JobStatus
from rlm_jobs.providers.ratelimit import RateLimiter, smooth_cap
from rlm_jobs.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)


def other_process(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def max_in_any_window(times: list[float], window_s: float = 1.0) -> int:
    """The most events in any window of ``window_s``: the busiest window starts at one."""
    ordered = sorted(times)
    return max(sum(1 for u in ordered if t <= u < t + window_s) for t in ordered)


def test_slots_are_evenly_spaced_for_every_caller(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    limits = {"p": RateLimit(rpm=1200)}  # 20 a second, 50 ms apart
    limiters = [RateLimiter(redis_client, limits), RateLimiter(other_process(redis_server), limits)]
    starts: list[float] = []
    lock = threading.Lock()

    def caller(limiter: RateLimiter) -> None:
        for _ in range(5):
            limiter.acquire("p/model", 10)
            with lock:
                starts.append(time.monotonic())

    threads = [threading.Thread(target=caller, args=(limiters[i % 2],)) for i in range(10)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(starts) == 50
    # 49 gaps of 50 ms: the limit, not the callers, sets the pace ...
    assert max(starts) - began >= 49 * 0.05 * 0.95
    # ... and no second holds more than rpm/60 by 5% plus one call.
    assert max_in_any_window(starts) <= int(20 * 1.05 + 1)


def test_callers_that_overslept_their_slots_still_start_smoothly(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    rng = random.Random(5)

    def oversleep(seconds: float) -> None:  # a loaded machine wakes threads late
        time.sleep(seconds + rng.uniform(0, 0.15))

    limits = {"p": RateLimit(rpm=1200)}
    limiters = [
        RateLimiter(client, limits, sleep=oversleep)
        for client in (redis_client, other_process(redis_server))
    ]
    starts: list[float] = []
    lock = threading.Lock()

    def caller(limiter: RateLimiter) -> None:
        for _ in range(6):
            limiter.acquire("p/model", 1)
            with lock:
                starts.append(time.monotonic())

    threads = [threading.Thread(target=caller, args=(limiters[i % 2],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(starts) == 72
    # The promise: rpm / 60 plus 5 % plus one call. The limiter admits one call fewer (its
    # margin for starts seen late, as these are: timed here, after the threads woke).
    assert smooth_cap(1200) < int(20 * 1.05 + 1)
    assert max_in_any_window(starts) <= int(20 * 1.05 + 1)


def test_a_provider_entry_covers_its_models_and_a_model_entry_wins(
    redis_client: redis.Redis,
) -> None:
    limiter = RateLimiter(
        redis_client, {"p": RateLimit(rpm=60), "p/fast": RateLimit(rpm=6000), "q/x": RateLimit()}
    )
    assert limiter.entry("p/a") == ("p", RateLimit(rpm=60))
    assert limiter.entry("p/fast") == ("p/fast", RateLimit(rpm=6000))
    assert limiter.entry("q/y") is None and limiter.entry("r/z") is None
    # p/a and p/b share one clock: the second call waits a whole second.
    assert limiter.acquire("p/a", 1) == 0.0
    started = time.monotonic()
    limiter.acquire("p/b", 1)
    assert time.monotonic() - started >= 0.9
    # An unlimited model never touches Redis.
    assert limiter.acquire("r/z", 1) == 0.0
    assert not redis_client.exists(keys.rate_limit("r")) and not redis_client.exists(
        keys.rate_limit("r/z")
    )


def test_tokens_are_reserved_before_and_corrected_after(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, {"p": RateLimit(tpm=60_000)})  # 1,000 tokens a second
    assert limiter.acquire("p/m", 500) == 0.0
    started = time.monotonic()
    waited = limiter.acquire("p/m", 100)  # the first call's 500 tokens take half a second
    assert 0.4 <= waited <= 0.6 and time.monotonic() - started >= 0.4
    # It reserved 0.1 s of tokens; its reply said 1,600 tokens, not 100: 1.5 s more.
    limiter.correct("p/m", 100, 1_600)
    started = time.monotonic()
    waited = limiter.acquire("p/m", 1)
    assert 1.5 <= waited <= 1.7 and time.monotonic() - started >= 1.5


def test_a_cool_down_holds_back_every_process_and_the_wait_is_reported(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    limits = {"p": RateLimit()}  # no pace, only cool-downs
    here, there = (
        RateLimiter(redis_client, limits),
        RateLimiter(other_process(redis_server), limits),
    )
    assert here.acquire("p/m", 1) == 0.0
    assert here.cool_down("p/m", 1.0)
    ttl_ms = redis_client.pttl(keys.rate_cooldown("p"))
    assert 0 < ttl_ms <= 1001
    slices: list[float] = []
    started = time.monotonic()
    waited = there.acquire("p/m", 1, on_wait=slices.append)
    assert time.monotonic() - started >= 0.95 and waited >= 0.95
    assert slices and abs(sum(slices) - waited) < 0.05
    # A shorter cool-down never cuts a longer one short.
    here.cool_down("p/m", 2.0)
    here.cool_down("p/m", 0.1)
    assert redis_client.pttl(keys.rate_cooldown("p")) > 1500
    # A model no entry covers is not cooled down by anyone.
    assert not here.cool_down("other/m", 5.0)


def test_a_caller_waiting_for_its_slot_honours_a_cool_down_that_began_meanwhile(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    limits = {"p": RateLimit(rpm=60)}  # one a second
    waiting = RateLimiter(other_process(redis_server), limits)
    limiter = RateLimiter(redis_client, limits)
    assert limiter.acquire("p/m", 1) == 0.0
    done: list[float] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: done.append(waiting.acquire("p/m", 1)))
    thread.start()  # its slot is a second away
    time.sleep(0.3)  # the scenario needs the 429 to land while the other caller sleeps
    limiter.cool_down("p/m", 2.0)
    thread.join(timeout=10)
    assert done and time.monotonic() - started >= 2.25


def test_on_wait_may_give_the_wait_up(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, {"p": RateLimit()})
    limiter.cool_down("p/m", 30.0)

    def cancelled(seconds: float) -> None:
        raise JobStopped(JobStatus.CANCELLED, "cancelled by test")

    started = time.monotonic()
    with pytest.raises(JobStopped, match="cancelled by test"):
        limiter.acquire("p/m", 1, on_wait=cancelled)
    assert time.monotonic() - started < 1.0
