"""A job's model calls: the root model's, and its sandbox's llm_query / rlm_query requests.

Every call is first placed in the job's journal, which names it: a resumed job asking what
it asked before gets the same call ids, and with them the answers already paid for. Root
calls and ``llm`` prompts go to the dispatcher (in the service, the llm worker pool, so a
call in flight outlives its orchestrator); ``rlm`` prompts start child loops in this
process (each with its own sandbox and journal, its calls on the shared dispatcher),
which cannot deadlock a worker pool: the parent's slot is never needed by its children.
Past ``max_depth``, ``rlm_query`` degrades to ``llm_query`` as in the reference.

A replay-only run (``Journal.replay_only``: a session's earlier job rebuilding its state)
answers only from stored results: a call without one ends the replay, and the cell's
prompts from there on read ``Error: not run: not replayed: ...``.

A job starts at most ``Limits.max_subcalls`` sub-calls (prompts and children alike); the
prompts past it are not sent and come back as ``Error: not run: ...`` slots naming the
limit, counted in progress (``subcalls_refused``) and in one trajectory entry per request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from rlm_jobs.calls import StoredCall
from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.clients.calls import CallContext
from rlm_jobs.dispatch import CallBatch, Stop
from rlm_jobs.engine import Engine, JobControl
from rlm_jobs.errors import ReplayEnded
from rlm_jobs.journal import Journal, Request
from rlm_jobs.models import JobResult, JobSpec, JobStatus
from rlm_jobs.prompts import CHILD_QUERY
from rlm_jobs.trajectory import Trajectory, subcall_entry
from sandbox.records import SubcallResult, not_run
from sandbox.wire import SubcallRequest

RunChild = Callable[[JobSpec, str, Engine, JobControl], JobResult]


class SubcallCounters:
    """Sub-calls done, in flight and refused, and rate-limit waits, for progress reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done = 0
        self.in_flight = 0
        self.refused = 0
        self.granted = 0
        self.rate_limited_s = 0.0

    def grant(self, wanted: int, cap: int) -> int:
        """How many of ``wanted`` new sub-calls fit under ``cap``; the rest are refused."""
        with self._lock:
            granted = max(0, min(wanted, cap - self.granted))
            self.granted += granted
            self.refused += wanted - granted
            return granted

    def started(self, n: int) -> None:
        with self._lock:
            self.in_flight += n

    def finished(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.done += 1

    def waited(self, seconds: float) -> None:
        with self._lock:
            self.rate_limited_s += seconds


class SubcallHandlerForJob:
    def __init__(
        self,
        *,
        spec: JobSpec,
        job_id: str,
        engine: Engine,
        control: JobControl,
        journal: Journal,
        trajectory: Trajectory,
        run_child: RunChild,
        report: Callable[[], None],
    ) -> None:
        self._spec = spec
        self._job_id = job_id
        self._engine = engine
        self._control = control
        self._journal = journal
        self._trajectory = trajectory
        self._run_child = run_child
        self._report = report
        self.counters = SubcallCounters()

    def stop(self) -> Stop | None:
        """Why the job's sub-calls must stop now, if they must."""
        handover = self._control.handover()
        if handover:
            return Stop(handover, keep_calls=True)
        reason = self._control.cancelled()
        if reason:
            return Stop(reason)
        over = self._control.meter.exceeded()
        return Stop(over[1]) if over else None

    def ask_root(self, messages: Sequence[ChatMessage]) -> tuple[SubcallResult, bool]:
        """The root model's reply to ``messages``, and whether it came from the journal."""
        model = self._spec.model
        placed = self._journal.root(model, messages)
        if placed.replayed:
            stored = self._engine.journals.calls.lookup(self._job_id, placed.call_ids)
            if stored:
                (answer,) = stored.values()
                self._meter(model, answer.result)
                return answer.result, True
            if self._journal.replay_only:
                raise self._journal.end_replay("the root model's reply was not kept")
            self._journal.unanswered()  # asked before, never answered: its worker died
        context = CallContext.of_job(self._job_id, self._spec, "root")
        batch = CallBatch(self._job_id, model, [list(messages)], placed.call_ids, context)

        def on_result(index: int, result: SubcallResult) -> None:
            self._meter(model, result)

        (result,) = self._engine.dispatcher.run_batch(batch, on_result=on_result, stop=self.stop)
        return result, False

    def _meter(self, model: str, result: SubcallResult) -> None:
        if result.cached:
            self._control.meter.add_cached(model, result.cached_cost_usd)
        elif result.input_tokens or result.output_tokens or result.cost_usd:
            self._control.meter.add(
                model, result.input_tokens, result.output_tokens, result.cost_usd
            )
        if result.rate_limited_s:
            self.counters.waited(result.rate_limited_s)

    def __call__(self, request: SubcallRequest) -> list[SubcallResult]:
        try:
            return self._answer(request)
        except ReplayEnded as exc:
            return [not_run(f"not replayed: {exc.reason}")] * len(request.prompts)

    def _answer(self, request: SubcallRequest) -> list[SubcallResult]:
        cap = self._spec.limits.max_subcalls
        granted = self.counters.grant(len(request.prompts), cap)
        prompts = request.prompts[:granted]
        refused = len(request.prompts) - granted
        results: list[SubcallResult] = []
        if prompts:
            if request.kind == "rlm" and self._spec.depth < self._spec.limits.max_depth:
                results = self._children(prompts, request.model)
            else:
                results = self._llm(prompts, request.model)
        if refused:
            results += self._refuse(refused, cap, request.model)
        return results

    def _refuse(self, count: int, cap: int, requested: str | None) -> list[SubcallResult]:
        reason = (
            f"this job reached its limit of {cap:,} sub-calls (max_subcalls); "
            f"{count:,} prompts of this request were not sent"
        )
        model = self._sub_model(requested)
        entry = subcall_entry(
            model=model,
            prompt=f"({count:,} prompts past the sub-call limit, not sent)",
            response=not_run(reason).text,
            input_tokens=0,
            output_tokens=0,
            latency_s=0.0,
            error=True,
        )
        entry["usage_summary"]["model_usage_summaries"][model]["total_calls"] = 0
        self._trajectory.add_subcall({**entry, "refused": count})
        self._report()
        return [not_run(reason)] * count

    def _sub_model(self, requested: str | None) -> str:
        return (
            requested or self._spec.sub_model or self._engine.default_sub_model or self._spec.model
        )

    def _llm(self, prompts: Sequence[str], requested: str | None) -> list[SubcallResult]:
        model = self._sub_model(requested)
        placed = self._journal.request("llm", model, prompts)
        if self._journal.replay_only:
            return self._stored_only(model, prompts, placed)
        context = CallContext.of_job(self._job_id, self._spec, "sub")
        batch = CallBatch.of_prompts(self._job_id, model, prompts, placed.call_ids, context)
        self.counters.started(len(prompts))
        self._report()
        on_result = self._recorder(model, prompts)
        return self._engine.dispatcher.run_batch(batch, on_result=on_result, stop=self.stop)

    def _stored_only(
        self, model: str, prompts: Sequence[str], placed: Request
    ) -> list[SubcallResult]:
        """A replay-only run's answers: all stored, or the replay ends here."""
        stored = self._engine.journals.calls.lookup(self._job_id, placed.call_ids)
        if len(stored) < len(placed.call_ids):
            raise self._journal.end_replay("a sub-call's answer was not kept")
        self.counters.started(len(prompts))
        record = self._recorder(model, prompts)
        results = [stored[c].result for c in placed.call_ids]
        for index, result in enumerate(results):
            record(index, result)
        return results

    def _recorder(self, model: str, prompts: Sequence[str]) -> Callable[[int, SubcallResult], None]:
        def on_result(index: int, result: SubcallResult) -> None:
            self._meter(model, result)
            self._trajectory.add_subcall(
                subcall_entry(
                    model=model,
                    prompt=prompts[index],
                    response=result.text,
                    input_tokens=result.input_tokens,
                    output_tokens=result.output_tokens,
                    latency_s=result.latency_s,
                    error=not result.ok,
                    worker=result.worker,
                    cached=result.cached,
                )
            )
            self.counters.finished()
            self._report()

        return on_result

    def _children(self, prompts: Sequence[str], requested: str | None) -> list[SubcallResult]:
        model = requested or self._spec.model
        placed = self._journal.request("rlm", model, prompts)
        calls = self._engine.journals.calls
        answered = calls.lookup(self._job_id, placed.call_ids) if placed.replayed else {}
        self.counters.started(len(prompts))
        self._report()

        def run_one(index: int) -> SubcallResult:
            child_id, prompt = placed.call_ids[index], prompts[index]
            stored = answered.get(child_id)
            if stored is not None:  # the child finished before: its answer, not a rerun
                if stored.usage is not None:
                    self._control.meter.add_usage(stored.usage)
                self._record_child(model, prompt, child_id, stored.result)
                return stored.result
            if self._journal.replay_only:
                raise self._journal.end_replay("a child RLM's result was not kept")
            halt = self.stop()
            if halt:
                self.counters.finished()
                return not_run(halt.reason)
            child_spec = self._spec.model_copy(
                update={
                    "query": CHILD_QUERY,
                    "context": self._engine.store_context(prompt),
                    "model": model,
                    "depth": self._spec.depth + 1,
                    "parent_id": self._job_id,
                    "root_prompt": None,
                    "doc_id": None,
                    "answer_schema": None,  # the parent's answer has the shape, not its parts
                    "session": None,  # a child starts its own REPL, whatever its parent's
                }
            )
            result = self._run_child(
                child_spec, child_id, self._engine, self._control.for_child(child_spec)
            )
            outcome = _child_outcome(result)
            if not self._control.handover():  # a child cut short by a hand-over runs again
                calls.store(self._job_id, child_id, StoredCall(outcome, usage=result.usage))
            self._record_child(model, prompt, child_id, outcome)
            return outcome

        workers = min(self._engine.child_concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rlm-child") as pool:
            return list(pool.map(run_one, range(len(prompts))))

    def _record_child(self, model: str, prompt: str, child_id: str, outcome: SubcallResult) -> None:
        self._trajectory.add_subcall(
            subcall_entry(
                model=model,
                prompt=prompt,
                response=outcome.text,
                input_tokens=outcome.input_tokens,
                output_tokens=outcome.output_tokens,
                latency_s=outcome.latency_s,
                error=not outcome.ok,
                kind="rlm",
                child_job_id=child_id,
            )
        )
        self.counters.finished()
        self._report()


def _child_outcome(result: JobResult) -> SubcallResult:
    usage = result.usage
    if result.status is JobStatus.COMPLETED and result.answer is not None:
        text, ok = result.answer, True
    else:
        partial = f" Partial answer: {result.answer}" if result.answer else ""
        text = f"Error: child RLM ended with {result.status.value}: {result.reason}.{partial}"
        ok = False
    return SubcallResult(
        ok=ok,
        text=text,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=usage.cost_usd,
        latency_s=result.execution_time_s,
    )
