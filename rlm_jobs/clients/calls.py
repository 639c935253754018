"""What the router is told about a call (``CallContext``) and what it tells (``CallObserver``).

``CallContext`` is plain data: the job and batch a call serves, whether it is the root
model or a sub-call, whether it may be answered from the response cache. The router
needs it for batch budgets and the cache; it never crosses a process boundary (an llm
worker rebuilds it from the job record).

``CallObserver`` is the metrics contract: the router calls it at every provider error
(retried ones too), every wait for a rate-limit slot or cool-down, and every finished
call, cached or not. The default does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import ValidationError

from rlm_jobs.models import JobSpec

__all__ = ["CallContext", "CallKind", "CallObserver", "NullCallObserver", "OnWait"]

CallKind = Literal["root", "sub"]
# Called before each slice of a rate-limit wait with its length in seconds; it may raise
# (a cancelled job's ``JobStopped``) to give the call up.
OnWait = Callable[[float], None]


@dataclass(frozen=True)
class CallContext:
    job_id: str = ""
    batch_id: str | None = None
    kind: CallKind = "root"
    # None follows the router's settings (``RLM_JOBS_CACHE``).
    cache: bool | None = None

    @classmethod
    def of_job(cls, job_id: str, spec: JobSpec, kind: CallKind) -> CallContext:
        return cls(job_id=job_id, batch_id=spec.batch_id, kind=kind, cache=spec.limits.cache)

    @classmethod
    def of_stored_spec(
        cls, job_id: str, raw_spec: bytes | str | None, kind: CallKind
    ) -> CallContext:
        """From a job record's ``spec`` field; a missing or unreadable one gives a context
        with no batch and the default cache setting (the call still runs)."""
        if raw_spec is None:
            return cls(job_id=job_id, kind=kind)
        try:
            return cls.of_job(job_id, JobSpec.model_validate_json(raw_spec), kind)
        except ValidationError:
            return cls(job_id=job_id, kind=kind)


class CallObserver(Protocol):
    def call_done(
        self,
        model: str,
        kind: str,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float,
        cached: bool,
    ) -> None:
        """A call finished (kind "root" or "sub"); a cached one costs 0 here."""

    def provider_error(self, model: str, code: str) -> None:
        """One attempt failed: "429", "500", "timeout", "connection", "malformed", ..."""

    def rate_limit_wait(self, model: str, seconds: float) -> None:
        """A call waited this long for its rate-limit slot or a cool-down."""


class NullCallObserver:
    """The default ``CallObserver``: nothing is measured."""

    def call_done(
        self,
        model: str,
        kind: str,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float,
        cached: bool,
    ) -> None:
        pass

    def provider_error(self, model: str, code: str) -> None:
        pass

    def rate_limit_wait(self, model: str, seconds: float) -> None:
        pass
