"""Sub-call dispatchers: how llm_query prompts reach a model.

The loop hands a dispatcher a batch of prompts and gets one result per prompt, in order.
``InProcessDispatcher`` runs them on a bounded thread pool (library mode); the Celery
dispatcher in ``workers/`` sends each prompt to the ``rlm.llm`` queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.errors import RLMJobsError

# One record per concept: the sandbox receives these very results (sandbox.records).
from sandbox.records import SubcallResult as SubcallResult
from sandbox.records import not_run as not_run


@dataclass(frozen=True)
class SubcallSpec:
    job_id: str
    model: str
    prompt: str


# Called once per prompt as its result arrives (index into the batch, result), so usage is
# accounted and caps are checked while the rest of the batch is still running.
ResultCallback = Callable[[int, SubcallResult], None]
# Returns a reason when the job must stop; prompts not yet started then fail with it.
StopCheck = Callable[[], str | None]


class Dispatcher(Protocol):
    def run_batch(
        self, specs: Sequence[SubcallSpec], *, on_result: ResultCallback, stop: StopCheck
    ) -> list[SubcallResult]: ...

    def close(self) -> None: ...


class Completer(Protocol):
    """What dispatchers need from ``rlm_jobs.clients.router.LLMRouter``."""

    def complete(
        self, model_name: str, messages: Sequence[ChatMessage], max_output_tokens: int | None = None
    ) -> _Priced: ...


class _Priced(Protocol):
    @property
    def text(self) -> str: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cost_usd(self) -> float: ...


def complete_one(router: Completer, spec: SubcallSpec) -> SubcallResult:
    """One sub-call, with every failure turned into an error slot the model can read."""
    started = time.monotonic()
    try:
        done = router.complete(spec.model, [{"role": "user", "content": spec.prompt}])
    except RLMJobsError as exc:
        return SubcallResult(ok=False, text=f"Error: {exc}", latency_s=time.monotonic() - started)
    return SubcallResult(
        ok=True,
        text=done.text,
        input_tokens=done.input_tokens,
        output_tokens=done.output_tokens,
        cost_usd=done.cost_usd,
        latency_s=time.monotonic() - started,
    )


class InProcessDispatcher:
    """Runs sub-calls on a bounded thread pool shared by every job of the process."""

    def __init__(self, router: Completer, *, concurrency: int) -> None:
        self._router = router
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rlm-subcall")

    def run_batch(
        self, specs: Sequence[SubcallSpec], *, on_result: ResultCallback, stop: StopCheck
    ) -> list[SubcallResult]:
        def run(index: int, spec: SubcallSpec) -> SubcallResult:
            reason = stop()
            result = not_run(reason) if reason else complete_one(self._router, spec)
            on_result(index, result)
            return result

        futures: list[Future[SubcallResult]] = [
            self._pool.submit(run, i, spec) for i, spec in enumerate(specs)
        ]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
