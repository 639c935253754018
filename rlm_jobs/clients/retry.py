"""Our retry loop for LLM calls.

The SDKs' own retries are off (``max_retries=0``) so that exactly one loop decides, using
one policy for every provider, and so that sleeping can be swapped for tests or for a
cancellable wait. Decisions look at the exception type only: ``ProviderRetryableError`` is
retried, every other error goes straight up. ``max_retries`` counts retries after the
first attempt: 5 means at most 6 calls.

Backoff is capped exponential with full jitter: before retry *n* (0-based) we sleep
``uniform(0, min(retry_max_s, retry_base_s * 2**n))``, which spreads out many workers that
failed together.

``Retry-After`` is a promise from the provider that an earlier retry will fail, so we never
sleep less than it says. ``retry_max_s`` is the longest the user lets one call block a thread,
so we never sleep more than that either. When the header asks for more than ``retry_max_s``
we give up at once and raise the ``ProviderRetryableError`` (its ``retry_after_s`` set) for
the caller to reschedule: sleeping a capped amount would only buy a certain second 429 and
spend a retry on it. Within the cap we add jitter *on top of* the header's value, so workers
told the same instant do not all come back at that instant.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from rlm_jobs.clients.base import ChatMessage, Completion, LLMClient, ResponseHandle
from rlm_jobs.config import Settings
from rlm_jobs.errors import ProviderRetryableError

__all__ = [
    "RetryPolicy",
    "RetryingClient",
    "Sleep",
    "call_with_retries",
    "gave_up",
    "retry_delay_s",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], None]
# uniform(low, high) -> a float in [low, high]; random.uniform by default.
Uniform = Callable[[float, float], float]


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    base_s: float
    max_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_retries=settings.max_retries,
            base_s=settings.retry_base_s,
            max_s=settings.retry_max_s,
        )


def retry_delay_s(
    policy: RetryPolicy,
    attempt: int,
    retry_after_s: float | None,
    uniform: Uniform = random.uniform,
) -> float | None:
    """Seconds to wait before retry number ``attempt`` (0-based); None means give up now."""
    ceiling = min(policy.max_s, policy.base_s * 2**attempt)
    if retry_after_s is None or retry_after_s <= 0:
        return uniform(0.0, ceiling)
    if retry_after_s > policy.max_s:
        return None
    return retry_after_s + uniform(0.0, min(ceiling, policy.max_s - retry_after_s))


def call_with_retries(
    call: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Sleep = time.sleep,
    uniform: Uniform = random.uniform,
    what: str = "LLM call",
) -> T:
    attempt = 0
    while True:
        try:
            return call()
        except ProviderRetryableError as exc:
            delay_s = (
                retry_delay_s(policy, attempt, exc.retry_after_s, uniform)
                if attempt < policy.max_retries
                else None
            )
            if delay_s is None:
                raise gave_up(exc, attempt + 1, policy) from exc
            _log.warning(
                "%s failed (%s); retry %d of %d in %.2fs",
                what,
                exc,
                attempt + 1,
                policy.max_retries,
                delay_s,
            )
            sleep(delay_s)
            attempt += 1


def gave_up(
    exc: ProviderRetryableError, attempts: int, policy: RetryPolicy
) -> ProviderRetryableError:
    """The error a call ends with once it stops retrying: the last one, saying why."""
    if exc.retry_after_s is not None and exc.retry_after_s > policy.max_s:
        why = f"Retry-After {exc.retry_after_s:.1f}s exceeds retry_max_s {policy.max_s:.1f}s"
    else:
        why = f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}"
    return ProviderRetryableError(
        f"{exc} ({why})",
        status_code=exc.status_code,
        retry_after_s=exc.retry_after_s,
        code=exc.code,
    )


class RetryingClient:
    """An ``LLMClient`` that retries another one according to a ``RetryPolicy``."""

    def __init__(
        self,
        inner: LLMClient,
        policy: RetryPolicy,
        *,
        sleep: Sleep = time.sleep,
        uniform: Uniform = random.uniform,
        provider: str = "",
    ) -> None:
        self.inner = inner
        self.policy = policy
        self._prefix = f"{provider}/" if provider else ""
        self._sleep = sleep
        self._uniform = uniform

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        max_output_tokens: int,
        handle: ResponseHandle | None = None,
    ) -> Completion:
        return call_with_retries(
            lambda: self.inner.complete(
                messages, model=model, max_output_tokens=max_output_tokens, handle=handle
            ),
            self.policy,
            sleep=self._sleep,
            uniform=self._uniform,
            what=f"completion from {self._prefix}{model}",
        )

    def close(self) -> None:
        self.inner.close()
