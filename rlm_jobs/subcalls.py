"""Answering a sandbox's llm_query / rlm_query requests for one job.

``llm`` prompts go to the dispatcher; ``rlm`` prompts start child loops in this process
(each with its own sandbox, its sub-calls on the shared dispatcher), which cannot deadlock
a worker pool: the parent's slot is never needed by its children. Past ``max_depth``,
``rlm_query`` degrades to ``llm_query`` as in the reference.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rlm_jobs.dispatch import SubcallResult, SubcallSpec, not_run
from rlm_jobs.engine import Engine, JobControl
from rlm_jobs.models import JobResult, JobSpec, JobStatus
from rlm_jobs.prompts import CHILD_QUERY
from rlm_jobs.trajectory import Trajectory, subcall_entry
from sandbox.wire import SubcallRequest

RunChild = Callable[[JobSpec, str, Engine, JobControl], JobResult]


class SubcallCounters:
    """Sub-calls done and in flight, for progress reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done = 0
        self.in_flight = 0

    def started(self, n: int) -> None:
        with self._lock:
            self.in_flight += n

    def finished(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.done += 1


class SubcallHandlerForJob:
    def __init__(
        self,
        *,
        spec: JobSpec,
        job_id: str,
        engine: Engine,
        control: JobControl,
        trajectory: Trajectory,
        run_child: RunChild,
        report: Callable[[], None],
    ) -> None:
        self._spec = spec
        self._job_id = job_id
        self._engine = engine
        self._control = control
        self._trajectory = trajectory
        self._run_child = run_child
        self._report = report
        self._child_ids = itertools.count(1)
        self.counters = SubcallCounters()

    def stop_reason(self) -> str | None:
        reason = self._control.cancelled()
        if reason:
            return reason
        over = self._control.meter.exceeded()
        return over[1] if over else None

    def __call__(self, request: SubcallRequest) -> list[SubcallResult]:
        if request.kind == "rlm" and self._spec.depth < self._spec.limits.max_depth:
            return self._children(request)
        return self._llm(request)

    def _sub_model(self, requested: str | None) -> str:
        return (
            requested or self._spec.sub_model or self._engine.default_sub_model or self._spec.model
        )

    def _llm(self, request: SubcallRequest) -> list[SubcallResult]:
        model = self._sub_model(request.model)
        specs = [SubcallSpec(self._job_id, model, p) for p in request.prompts]
        self.counters.started(len(specs))
        self._report()

        def on_result(index: int, result: SubcallResult) -> None:
            if result.input_tokens or result.output_tokens or result.cost_usd:
                self._control.meter.add(
                    model, result.input_tokens, result.output_tokens, result.cost_usd
                )
            self._trajectory.add_subcall(
                subcall_entry(
                    model=model,
                    prompt=specs[index].prompt,
                    response=result.text,
                    input_tokens=result.input_tokens,
                    output_tokens=result.output_tokens,
                    latency_s=result.latency_s,
                    error=not result.ok,
                    worker=result.worker,
                )
            )
            self.counters.finished()
            self._report()

        results = self._engine.dispatcher.run_batch(
            specs, on_result=on_result, stop=self.stop_reason
        )
        return results

    def _children(self, request: SubcallRequest) -> list[SubcallResult]:
        model = request.model or self._spec.model
        self.counters.started(len(request.prompts))
        self._report()

        def run_one(prompt: str) -> SubcallResult:
            reason = self.stop_reason()
            if reason:
                self.counters.finished()
                return not_run(reason)
            child_id = f"{self._job_id}.{next(self._child_ids)}"
            child_spec = self._spec.model_copy(
                update={
                    "query": CHILD_QUERY,
                    "context": self._engine.store_context(prompt),
                    "model": model,
                    "depth": self._spec.depth + 1,
                    "parent_id": self._job_id,
                    "root_prompt": None,
                    "doc_id": None,
                }
            )
            result = self._run_child(
                child_spec, child_id, self._engine, self._control.for_child(child_spec)
            )
            outcome = _child_outcome(result)
            self._trajectory.add_subcall(
                subcall_entry(
                    model=model,
                    prompt=prompt,
                    response=outcome.text,
                    input_tokens=result.usage.input_tokens,
                    output_tokens=result.usage.output_tokens,
                    latency_s=result.execution_time_s,
                    error=not outcome.ok,
                    kind="rlm",
                    child_job_id=child_id,
                )
            )
            self.counters.finished()
            self._report()
            return outcome

        workers = min(self._engine.child_concurrency, len(request.prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rlm-child") as pool:
            return list(pool.map(run_one, request.prompts))


def _child_outcome(result: JobResult) -> SubcallResult:
    if result.status is JobStatus.COMPLETED and result.answer is not None:
        return SubcallResult(ok=True, text=result.answer)
    partial = f" Partial answer: {result.answer}" if result.answer else ""
    return SubcallResult(
        ok=False,
        text=f"Error: child RLM ended with {result.status.value}: {result.reason}.{partial}",
    )
