"""Provider controls shared by the whole cluster through Redis.

- ``ratelimit``: global rate limits per model or provider, with 429 cool-downs;
- ``cache``: the shared response cache;
- ``budget``: spend caps for a whole batch;
- ``estimate``: token estimates (rate-limit reservations, ``--dry-run``);
- ``controls``: ``ProviderControls``, the object the router is given.

Each talks to Redis through a Lua script in ``lua/``, loaded when the object is built.
"""

from rlm_jobs.providers.budget import BatchBudgets, BudgetState
from rlm_jobs.providers.cache import CachedReply, ResponseCache, request_digest
from rlm_jobs.providers.controls import CallSettlement, ProviderControls
from rlm_jobs.providers.ratelimit import RateLimiter

__all__ = [
    "BatchBudgets",
    "BudgetState",
    "CachedReply",
    "CallSettlement",
    "ProviderControls",
    "RateLimiter",
    "ResponseCache",
    "request_digest",
]
