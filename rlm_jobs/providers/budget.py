"""Budgets for a whole batch: caps on its spend in USD and tokens, shared by every worker.

The caps and the spend live in one hash per batch (``keys.batch_budget``). Every provider
call of the batch's jobs adds its usage with ``lua/budget_add.lua`` (atomic across jobs and
workers); a call starts only while the spend is under every cap, so once a cap is reached
no new call starts and the overshoot is at most the calls already in flight. Cached calls
cost nothing and add nothing.

A batch without a budget has no hash: the check before each call is one HMGET that finds
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.typing import EncodableT, FieldT

from rlm_jobs import keys
from rlm_jobs.errors import SpecError
from rlm_jobs.redis_errors import redis_errors
from rlm_jobs.scripts import source

__all__ = ["BatchBudgets", "BudgetState"]

_FIELDS = ("max_cost_usd", "max_tokens", "cost_usd", "tokens")


def _number(raw: object) -> float | None:
    if raw is None:
        return None
    return float(raw.decode() if isinstance(raw, bytes) else str(raw))


@dataclass(frozen=True)
class BudgetState:
    batch_id: str
    max_cost_usd: float | None
    max_tokens: int | None
    cost_usd: float
    tokens: int

    def exhausted(self) -> str | None:
        """Why no new call may start, or None while the batch is under every cap."""
        if self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd:
            return (
                f"batch {self.batch_id} spent ${self.cost_usd:.6f} of its "
                f"${self.max_cost_usd:.6f} budget (--batch-max-cost-usd)"
            )
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return (
                f"batch {self.batch_id} used {self.tokens:,} of its {self.max_tokens:,} "
                f"tokens (--batch-max-tokens)"
            )
        return None


class BatchBudgets:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._add = client.register_script(source("budget_add"))

    def set(self, batch_id: str, *, max_cost_usd: float | None, max_tokens: int | None) -> None:
        """Give a batch its caps (a resubmission may raise or lower them); spend is kept."""
        if max_cost_usd is not None and not max_cost_usd > 0:
            raise SpecError(f"a batch budget must be above $0, not {max_cost_usd}")
        if max_tokens is not None and max_tokens < 1:
            raise SpecError(f"a batch token cap must be at least 1, not {max_tokens}")
        caps: dict[FieldT, EncodableT] = {}
        if max_cost_usd is not None:
            caps["max_cost_usd"] = max_cost_usd
        if max_tokens is not None:
            caps["max_tokens"] = max_tokens
        if not caps:
            return
        key = keys.batch_budget(batch_id)
        with redis_errors(f"setting the budget of batch {batch_id}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(key, mapping=caps)
            pipe.hsetnx(key, "cost_usd", 0)
            pipe.hsetnx(key, "tokens", 0)
            # A cap raised past the spend lets the batch's jobs call again.
            pipe.hdel(key, "exhausted_at")
            pipe.execute()

    def state(self, batch_id: str) -> BudgetState | None:
        """The batch's caps and spend; None if it has no budget."""
        with redis_errors(f"reading the budget of batch {batch_id}"):
            raw = self._client.hmget(keys.batch_budget(batch_id), _FIELDS)
        max_cost, max_tokens, cost, tokens = (_number(v) for v in raw)
        if max_cost is None and max_tokens is None:
            return None
        return BudgetState(
            batch_id=batch_id,
            max_cost_usd=max_cost,
            max_tokens=None if max_tokens is None else int(max_tokens),
            cost_usd=cost or 0.0,
            tokens=int(tokens or 0),
        )

    def exhausted(self, batch_id: str) -> str | None:
        state = self.state(batch_id)
        return None if state is None else state.exhausted()

    def add(
        self,
        batch_id: str,
        tokens: int,
        cost_usd: float,
        client: redis.Redis | redis.client.Pipeline | None = None,
    ) -> None:
        """Count a call's usage against its batch; ``client`` may be a pipeline."""
        with redis_errors(f"counting the spend of batch {batch_id}"):
            self._add(
                keys=[keys.batch_budget(batch_id)],
                args=[tokens, repr(float(cost_usd))],
                client=client,
            )
