"""Data that crosses a boundary: job specs, limits, usage, results.

Every model forbids unknown fields so a typo in a spec fails loudly instead of being ignored.
"""

from __future__ import annotations

import threading
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)


def validation_problems(exc: ValidationError, what: str) -> str:
    """A pydantic error as one readable line: ``field: message; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in exc.errors()
    )


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    MAX_ITERATIONS = "MAX_ITERATIONS"
    TIMEOUT = "TIMEOUT"
    TOKEN_LIMIT = "TOKEN_LIMIT"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    ERROR_LIMIT = "ERROR_LIMIT"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"

    @property
    def finished(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


# "provider/model", e.g. "openai/gpt-4o-mini" or "anthropic/claude-sonnet-4-5".
ModelName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9_-]+/\S+$", min_length=3, max_length=200)
]


def split_model(name: str) -> tuple[str, str]:
    provider, _, model = name.partition("/")
    return provider, model


class Limits(Strict):
    """Per-job limits; every default has a reason."""

    # Enough turns for chunk → map → reduce → check on any task we have seen; cheap to raise.
    max_iterations: int = Field(default=30, ge=1, le=1000)
    # Depth 1 lets the root call child RLMs; deeper trees multiply cost quickly.
    max_depth: int = Field(default=1, ge=0, le=5)
    # A job is a batch unit: an hour is generous and still frees a stuck worker.
    max_timeout_s: float = Field(default=3600.0, gt=0)
    # None means uncapped; users opt into caps per job or batch.
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    # Five failing cells in a row means the model is stuck, not learning.
    max_consecutive_errors: int = Field(default=5, ge=1)
    # The reference's truncation limit: enough to read, small enough for any window.
    max_output_chars: int = Field(default=20_000, ge=100, le=1_000_000)
    # Sub-calls run inside a cell, so a cell may legitimately wait for a large fan-out.
    cell_timeout_s: float = Field(default=300.0, gt=0, le=86_400)


class ContextRef(Strict):
    """A context stored once in Redis, addressed by its SHA-256."""

    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    kind: Literal["str", "list", "dict"]
    length: int = Field(ge=0, description="characters in a str, items in a list or dict")
    total_chars: int = Field(ge=0)

    def describe(self) -> str:
        if self.kind == "str":
            return f"a string of {self.length:,} characters"
        if self.kind == "list":
            return f"a list of {self.length:,} items ({self.total_chars:,} characters in all)"
        return f"a dict with {self.length:,} keys ({self.total_chars:,} characters in all)"


class JobSpec(Strict):
    """What a job is: everything needed to run it again from scratch."""

    query: Annotated[str, StringConstraints(min_length=1, max_length=100_000)]
    context: ContextRef
    model: ModelName
    sub_model: ModelName | None = None
    limits: Limits = Field(default_factory=Limits)
    root_prompt: str | None = Field(default=None, max_length=100_000)
    depth: int = Field(default=0, ge=0)
    parent_id: str | None = None
    batch_id: str | None = None
    doc_id: str | None = None


class ModelUsage(Strict):
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class Usage(Strict):
    """Tokens and cost per model; totals are derived, never stored twice."""

    by_model: dict[str, ModelUsage] = Field(default_factory=dict)

    @property
    def input_tokens(self) -> int:
        return sum(u.input_tokens for u in self.by_model.values())

    @property
    def output_tokens(self) -> int:
        return sum(u.output_tokens for u in self.by_model.values())

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost_usd(self) -> float:
        return sum(u.cost_usd for u in self.by_model.values())

    @property
    def calls(self) -> int:
        return sum(u.calls for u in self.by_model.values())

    def add(self, model: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        entry = self.by_model.setdefault(model, ModelUsage())
        entry.calls += 1
        entry.input_tokens += input_tokens
        entry.output_tokens += output_tokens
        entry.cost_usd += cost_usd

    def merge(self, other: Usage) -> None:
        for model, u in other.by_model.items():
            entry = self.by_model.setdefault(model, ModelUsage())
            entry.calls += u.calls
            entry.input_tokens += u.input_tokens
            entry.output_tokens += u.output_tokens
            entry.cost_usd += u.cost_usd

    def summary(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": round(self.cost_usd, 8),
            "by_model": {m: u.model_dump() for m, u in self.by_model.items()},
        }


class UsageMeter:
    """Thread-safe running usage of one job, forwarded to its parent's meter.

    A child RLM's meter chains to its parent's, so the root meter sees every call in the
    tree while each job still knows its own subtree's usage. Caps are checked up the chain:
    the limits the user set on the root bind the whole tree.
    """

    def __init__(
        self,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
        parent: UsageMeter | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._usage = Usage()
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd
        self.parent = parent

    def add(self, model: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        with self._lock:
            self._usage.add(model, input_tokens, output_tokens, cost_usd)
        if self.parent is not None:
            self.parent.add(model, input_tokens, output_tokens, cost_usd)

    def snapshot(self) -> Usage:
        with self._lock:
            return self._usage.model_copy(deep=True)

    def exceeded(self) -> tuple[JobStatus, str] | None:
        """The first cap this job or an ancestor has gone past, with a readable reason."""
        with self._lock:
            tokens, cost = self._usage.total_tokens, self._usage.cost_usd
        if self.max_tokens is not None and tokens > self.max_tokens:
            return JobStatus.TOKEN_LIMIT, f"used {tokens:,} tokens, cap is {self.max_tokens:,}"
        if self.max_cost_usd is not None and cost > self.max_cost_usd:
            return (
                JobStatus.BUDGET_EXCEEDED,
                f"spent ${cost:.6f}, budget is ${self.max_cost_usd:.6f}",
            )
        return self.parent.exceeded() if self.parent is not None else None


class JobResult(Strict):
    job_id: str
    status: JobStatus
    answer: str | None = None
    reason: str = ""
    usage: Usage = Field(default_factory=Usage)
    iterations: int = 0
    execution_time_s: float = 0.0
    depth: int = 0

    @model_validator(mode="after")
    def _finished(self) -> JobResult:
        if not self.status.finished:
            raise ValueError(f"a result needs a finished status, not {self.status.value}")
        return self
