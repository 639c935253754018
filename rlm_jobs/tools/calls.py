"""One job's tool calls: checked at the boundary, journaled, run, recorded.

A request is checked before anything else (a known tool, JSON arguments within
``tool_max_json_bytes`` that the function takes); a refusal is answered at once, the same
for every run of the job, so it needs no journal entry. A call that passes is placed in the
job's journal like a sub-call request and its result stored by call id (``job_calls``), a
failure or a timeout included: a resumed job's cell gets what the first run's got, and the
tool is not called again. A tool call in flight when the orchestrator died has no stored
result and runs again (tools that change the world should be idempotent).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rlm_jobs.calls import ResultStore, StoredCall
from rlm_jobs.errors import ReplayEnded, ToolError
from rlm_jobs.journal import Journal
from rlm_jobs.tools.registry import Tool, Toolbox
from rlm_jobs.tools.values import encode_result, parse_arguments
from rlm_jobs.trajectory import Trajectory, tool_entry
from sandbox.records import SubcallResult, ToolSpec, not_run
from sandbox.wire import ToolRequest


class ToolCounters:
    """Tool calls done (and how many of them failed) and running, for progress reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done = 0
        self.failed = 0
        self.in_flight = 0

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, ok: bool, *, ran: bool = True) -> None:
        with self._lock:
            self.in_flight -= ran
            self.done += 1
            self.failed += not ok


class ToolCallsForJob:
    """Answers one job's tool requests; called from the sandbox session's helper threads."""

    def __init__(
        self,
        *,
        toolbox: Toolbox,
        job_id: str,
        journal: Journal,
        calls: ResultStore,
        trajectory: Trajectory,
        report: Callable[[], None],
        handover: Callable[[], str | None],
    ) -> None:
        self._toolbox = toolbox
        self._job_id = job_id
        self._journal = journal
        self._calls = calls
        self._trajectory = trajectory
        self._report = report
        self._handover = handover
        self.counters = ToolCounters()

    @property
    def specs(self) -> list[ToolSpec]:
        return self._toolbox.specs

    def __call__(self, request: ToolRequest) -> SubcallResult:
        tool = self._toolbox.tools.get(request.name)
        if tool is None:
            known = ", ".join(self._toolbox.tools.names) or "none"
            return self._refused(request, f"there is no tool named {request.name!r} ({known})")
        try:
            args, kwargs = parse_arguments(
                request.arguments, tool.name, self._toolbox.max_json_bytes
            )
            tool.check_arguments(args, kwargs)
        except ToolError as exc:
            return self._refused(request, str(exc))
        try:
            return self._journaled(tool, request, args, kwargs)
        except ReplayEnded as exc:  # a replay-only run met a call its journal does not hold
            return not_run(f"not replayed: {exc.reason}")

    def _journaled(
        self, tool: Tool, request: ToolRequest, args: list[object], kwargs: dict[str, object]
    ) -> SubcallResult:
        placed = self._journal.request("tool", tool.name, [request.arguments])
        (call_id,) = placed.call_ids
        if placed.replayed:
            stored = self._calls.lookup(self._job_id, [call_id]).get(call_id)
            if stored is not None:
                self._record(tool.name, request.arguments, stored.result, replayed=True)
                return stored.result
            if self._journal.replay_only:
                raise self._journal.end_replay(f"{tool.name} was called, its result not kept")
            self._journal.unanswered()  # called before, never answered: its worker died
        self.counters.started()
        self._report()
        outcome = self._toolbox.runner.run(
            tool.name, tool.function, args, kwargs, self._toolbox.timeout_for(tool)
        )
        text, ok = outcome.error, outcome.ok
        if ok:
            try:
                text = encode_result(outcome.value, tool.name, self._toolbox.max_json_bytes)
            except ToolError as exc:
                text, ok = str(exc), False
        result = SubcallResult(ok=ok, text=text, latency_s=outcome.duration_s)
        if not self._handover():  # a run handed over mid-call calls it again
            self._calls.store(self._job_id, call_id, StoredCall(result))
        self._record(tool.name, request.arguments, result, ran=True)
        return result

    def _refused(self, request: ToolRequest, why: str) -> SubcallResult:
        result = SubcallResult(ok=False, text=why)
        self._record(request.name, request.arguments, result)
        return result

    def _record(
        self,
        name: str,
        arguments: str,
        result: SubcallResult,
        *,
        replayed: bool = False,
        ran: bool = False,
    ) -> None:
        self._trajectory.add_subcall(
            tool_entry(
                name=name,
                arguments=arguments[:2_000],
                response=result.text,
                ok=result.ok,
                latency_s=result.latency_s,
                replayed=replayed,
            )
        )
        self.counters.finished(result.ok, ran=ran)
        self._report()
