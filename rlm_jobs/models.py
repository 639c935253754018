"""Data that crosses a boundary: job specs, limits, usage, results.

Every model forbids unknown fields so a typo in a spec fails loudly instead of being ignored.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

# Its own module so errors can name it without importing the models; re-exported here.
from rlm_jobs.status import JobStatus as JobStatus


def validation_problems(exc: ValidationError, what: str) -> str:
    """A pydantic error as one readable line: ``field: message; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in exc.errors()
    )


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# "provider/model", e.g. "openai/gpt-4o-mini" or "anthropic/claude-sonnet-4-5".
ModelName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9_-]+/\S+$", min_length=3, max_length=200)
]


def split_model_name(name: str) -> tuple[str, str]:
    """``"provider/model"`` as (provider, model): the one place a model name is taken apart.

    ValueError when either part is missing (``ModelName`` fields are checked already).
    """
    provider, sep, model = name.partition("/")
    if not sep or not provider or not model:
        raise ValueError(
            f"model names look like 'provider/model' (e.g. 'openai/gpt-4o-mini'), not {name!r}"
        )
    return provider, model


def model_provider(name: str) -> str:
    """The provider part of a model name, for lookups that fall back to a provider-wide
    entry (prices, rate limits); a name without one is its own provider."""
    return name.partition("/")[0]


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
    # Turns a model gets to fix a final answer that breaks the job's answer schema: one or
    # two fix what a model can fix (a type, a missing field); more rarely help.
    max_schema_retries: int = Field(default=2, ge=0, le=10)

    # llm_query prompts and rlm_query children one job may start (DSPy's max_llm_calls):
    # a map over 1,000 chunks of 20,000 characters (20 MB) fits; a cell that loops over
    # every line of a big file, or asks 20,000 copies of a prompt, is stopped at a price
    # a user can see coming, even for a model missing from the price table.
    max_subcalls: int = Field(default=1000, ge=0, le=1_000_000)
    # Answer exact repeats of earlier requests from the shared response cache; None
    # follows the deployment's RLM_JOBS_CACHE (off unless set).
    cache: bool | None = None


# Room for a corpus's list of documents; the prompt repeats it, so it stays bounded.
MAX_DESCRIPTION_CHARS = 20_000


def _answer_schema(schema: dict[str, Any]) -> dict[str, Any]:
    # Imported here: jsonschema takes a while to import, and most processes never need it.
    from rlm_jobs.schema import check_schema

    return check_schema(schema)


class ContextRef(Strict):
    """A context stored once in Redis, addressed by its SHA-256."""

    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    kind: Literal["str", "list", "dict"]
    length: int = Field(ge=0, description="characters in a str, items in a list or dict")
    total_chars: int = Field(ge=0)
    # What the model is told about the content beyond type and size: the file it came from,
    # its markers ("[page N]"), a corpus's documents and the files left out.
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)

    def describe(self) -> str:
        if self.kind == "str":
            return f"a string of {self.length:,} characters"
        if self.kind == "list":
            return f"a list of {self.length:,} items ({self.total_chars:,} characters in all)"
        return f"a dict with {self.length:,} keys ({self.total_chars:,} characters in all)"


# A session's id: what `rlm-jobs session open` prints, or a name the user chose.
SessionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
# Questions one session holds: each later one replays them all (rlm_jobs.sessions).
MAX_SESSION_JOBS = 1_000


class SessionPlace(Strict):
    """Where a job sits in a session: the session, and its earlier jobs in order (what a
    run of this job replays first, so it needs nothing but the spec and their journals)."""

    id: SessionId
    earlier: list[str] = Field(default_factory=list, max_length=MAX_SESSION_JOBS)

    @property
    def index(self) -> int:
        return len(self.earlier)


class JobSpec(Strict):
    """What a job is: everything needed to run it (its journal holds how far it got)."""

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
    # A JSON Schema the final answer must match (checked when the spec is built).
    answer_schema: Annotated[dict[str, Any], AfterValidator(_answer_schema)] | None = None
    # The session this job continues (rlm-jobs submit --session), if any.
    session: SessionPlace | None = None


class ModelUsage(Strict):
    # Calls that reached the provider; cached ones are counted apart and cost nothing.
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    # Answered from the response cache, and what they would have cost without it.
    cached_calls: int = 0
    cached_cost_usd: float = 0.0


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

    @property
    def cached_calls(self) -> int:
        return sum(u.cached_calls for u in self.by_model.values())

    @property
    def cached_cost_usd(self) -> float:
        return sum(u.cached_cost_usd for u in self.by_model.values())

    def add(self, model: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        entry = self.by_model.setdefault(model, ModelUsage())
        entry.calls += 1
        entry.input_tokens += input_tokens
        entry.output_tokens += output_tokens
        entry.cost_usd += cost_usd

    def add_cached(self, model: str, would_cost_usd: float) -> None:
        """A call answered from the cache: no tokens spent, nothing paid."""
        entry = self.by_model.setdefault(model, ModelUsage())
        entry.cached_calls += 1
        entry.cached_cost_usd += would_cost_usd

    def merge(self, other: Usage) -> None:
        for model, u in other.by_model.items():
            entry = self.by_model.setdefault(model, ModelUsage())
            entry.calls += u.calls
            entry.input_tokens += u.input_tokens
            entry.output_tokens += u.output_tokens
            entry.cost_usd += u.cost_usd
            entry.cached_calls += u.cached_calls
            entry.cached_cost_usd += u.cached_cost_usd

    def summary(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": round(self.cost_usd, 8),
            "cached_calls": self.cached_calls,
            "cached_cost_usd": round(self.cached_cost_usd, 8),
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

    def add_usage(self, usage: Usage) -> None:
        """Count a whole subtree's usage at once (a child RLM answered from the journal)."""
        with self._lock:
            self._usage.merge(usage)
        if self.parent is not None:
            self.parent.add_usage(usage)

    def add_cached(self, model: str, would_cost_usd: float) -> None:
        with self._lock:
            self._usage.add_cached(model, would_cost_usd)
        if self.parent is not None:
            self.parent.add_cached(model, would_cost_usd)

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
    # The answer parsed and validated against the job's answer schema (None without one).
    structured: Any = None
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
