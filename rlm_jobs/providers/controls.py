"""``ProviderControls``: what the router consults around every call, backed by one Redis.

Before a call: the batch budget (one HMGET, only for a batch's jobs), the response cache
(one GET, only when the call may be cached), a rate-limit slot (one script, only for a
limited model, per attempt). After it: the spend, the token correction and the cache
write go in one pipelined round trip. The router decides the order; this object only
knows Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from rlm_jobs.config import Settings
from rlm_jobs.providers.budget import BatchBudgets
from rlm_jobs.providers.cache import CachedReply, ResponseCache
from rlm_jobs.providers.ratelimit import RateLimiter
from rlm_jobs.redis_errors import redis_errors

__all__ = ["CallSettlement", "ProviderControls"]


@dataclass(frozen=True)
class CallSettlement:
    """A finished provider call's bookkeeping."""

    model_name: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    # The tokens the rate limiter reserved before the call.
    reserved_tokens: int
    # Set when the call counts against a batch budget / is to be cached.
    budget_batch_id: str | None = None
    cache_digest: str | None = None
    reply: CachedReply | None = None


class ProviderControls:
    def __init__(
        self,
        client: redis.Redis,
        *,
        limiter: RateLimiter,
        cache: ResponseCache,
        budgets: BatchBudgets,
    ) -> None:
        self._client = client
        self.limiter = limiter
        self.cache = cache
        self.budgets = budgets

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> ProviderControls:
        return cls(
            client,
            limiter=RateLimiter(client, settings.rate_limits),
            cache=ResponseCache(
                client, ttl_s=settings.cache_ttl_s, max_bytes=settings.cache_max_bytes
            ),
            budgets=BatchBudgets(client),
        )

    def settle(self, done: CallSettlement) -> None:
        """Everything a finished call changes, in one round trip (nothing to do: none)."""
        used = done.input_tokens + done.output_tokens
        limited = self.limiter.entry(done.model_name)
        needs_tokens = limited is not None and limited[1].tpm is not None
        if done.budget_batch_id is None and done.cache_digest is None and not needs_tokens:
            return
        with redis_errors(f"settling a call to {done.model_name}"):
            pipe = self._client.pipeline(transaction=False)
            if done.budget_batch_id is not None:
                self.budgets.add(done.budget_batch_id, used, done.cost_usd, client=pipe)
            if needs_tokens:
                self.limiter.correct(done.model_name, done.reserved_tokens, used, client=pipe)
            if done.cache_digest is not None and done.reply is not None:
                self.cache.put(done.cache_digest, done.reply, client=pipe)
            pipe.execute()
