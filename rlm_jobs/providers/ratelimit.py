"""Cluster-wide rate limits per model or provider (``RLM_JOBS_RATE_LIMITS``).

One Lua script (``lua/rate_take.lua``) is a GCRA limiter without burst: request slots are
``60 / rpm`` seconds apart for the whole cluster, handed out in the order callers asked,
root calls and sub-calls alike. A caller gets a slot that may lie in the future and sleeps
until it, so taking one is a single round trip however many callers wait, and the calls
that reach the provider are evenly spaced rather than bunched at the start of each
minute. A token limit runs its own clock: a call starts once the tokens reserved before it
are paid for, and reserves its own (estimated from its characters, ``estimate``), corrected
when the reply reports its usage.

Slots are exact; callers are not: a thread on a busy machine wakes late and would start
just before the next slot's caller. So the script also keeps the starts of the last second
and lets a call start only while there are fewer than ``smooth_cap(rpm)``: one call under
the promise (no second holds more than ``rpm / 60`` by 5% plus one call), kept as margin
for the time between a start and its request reaching the provider.

A 429 with Retry-After cools the entry down for everyone (``lua/rate_cool.lua``): new
slots start after it, and a caller that slept towards a slot checks the cool-down once
before calling (one more round trip, only for callers that waited).

The entry for a call is its model's own (``"openai/gpt-4o-mini"``), else its provider's
(``"openai"``), which the provider's models without an entry of their own share. Models
with neither are not limited, and cost no Redis round trip.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable, Mapping

import redis

from rlm_jobs import keys
from rlm_jobs.clients.calls import OnWait
from rlm_jobs.config import RateLimit
from rlm_jobs.models import model_provider
from rlm_jobs.redis_errors import redis_errors
from rlm_jobs.scripts import source

__all__ = ["RateLimiter", "smooth_cap"]

_US = 1_000_000
# Waits are slept in slices this long, each announced to ``on_wait`` (which may give up).
WAIT_SLICE_S = 1.0
# With no request limit nothing spaces the callers a cool-down held back: each waits a
# little extra, at most this share of the cool-down (and a second), so they do not all
# call again in the same instant.
COOLDOWN_SPREAD = 0.1

Sleep = Callable[[float], None]
Uniform = Callable[[float, float], float]


def smooth_cap(rpm: float) -> int:
    """Calls that may start in any one second: one under ``rpm / 60 * 1.05 + 1``."""
    return max(1, math.floor(rpm / 60 * 1.05 + 1) - 1)


class RateLimiter:
    def __init__(
        self,
        client: redis.Redis,
        limits: Mapping[str, RateLimit],
        *,
        sleep: Sleep = time.sleep,
        uniform: Uniform = random.uniform,
    ) -> None:
        self._limits = dict(limits)
        self._sleep = sleep
        self._uniform = uniform
        self._take = client.register_script(source("rate_take"))
        self._cool = client.register_script(source("rate_cool"))
        self._adjust = client.register_script(source("rate_adjust"))

    def entry(self, model_name: str) -> tuple[str, RateLimit] | None:
        """The entry that limits ``model_name``: its own, else its provider's, else None."""
        limit = self._limits.get(model_name)
        if limit is not None:
            return model_name, limit
        provider = model_provider(model_name)
        limit = self._limits.get(provider)
        return (provider, limit) if limit is not None else None

    def acquire(self, model_name: str, tokens: int, on_wait: OnWait | None = None) -> float:
        """Wait for this call's slot; returns the seconds waited (0 when not limited)."""
        found = self.entry(model_name)
        if found is None:
            return 0.0
        name, limit = found
        per_request = round(_US * 60 / limit.rpm) if limit.rpm else 0
        per_token = _US * 60 / limit.tpm if limit.tpm else 0.0
        cap = smooth_cap(limit.rpm) if limit.rpm else 0
        call = uuid.uuid4().hex
        state = [keys.rate_limit(name), keys.rate_cooldown(name), keys.rate_starts(name)]
        waited = 0.0
        confirm = False
        while True:
            with redis_errors(f"taking a rate-limit slot for {name}"):
                wait_us, cooling = self._take(
                    keys=state,
                    args=[
                        per_request,
                        per_token,
                        0 if confirm else tokens,
                        int(confirm),
                        cap,
                        call,
                    ],
                )
            if int(wait_us) <= 0:
                return waited
            wait_s = int(wait_us) / _US
            if cooling and not per_request:
                wait_s += self._uniform(0.0, min(1.0, wait_s * COOLDOWN_SPREAD))
            self._wait(wait_s, on_wait)
            waited += wait_s
            confirm = True

    def _wait(self, seconds: float, on_wait: OnWait | None) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            step = min(left, WAIT_SLICE_S)
            if on_wait is not None:
                on_wait(step)
            self._sleep(step)

    def cool_down(self, model_name: str, seconds: float) -> bool:
        """A 429 asked for ``seconds`` of quiet: no call of this entry starts before then.

        False when no entry limits the model (the failed call's own retry still waits).
        """
        found = self.entry(model_name)
        if found is None or seconds <= 0:
            return False
        name = found[0]
        with redis_errors(f"cooling {name} down"):
            self._cool(keys=[keys.rate_cooldown(name)], args=[round(seconds * _US)])
        return True

    def correct(
        self,
        model_name: str,
        reserved_tokens: int,
        used_tokens: int,
        client: redis.Redis | redis.client.Pipeline | None = None,
    ) -> None:
        """Move the token clock by what the call used beyond (or below) its reservation.

        ``client`` may be a pipeline, so the correction rides along with the call's other
        bookkeeping in one round trip.
        """
        found = self.entry(model_name)
        if found is None or not found[1].tpm or used_tokens == reserved_tokens:
            return
        name, limit = found
        assert limit.tpm is not None
        shift_us = round((used_tokens - reserved_tokens) * _US * 60 / limit.tpm)
        with redis_errors(f"correcting the token count of {name}"):
            self._adjust(keys=[keys.rate_limit(name)], args=[shift_us], client=client)
