"""The loop through its own seams: a scripted completer and a fake REPL, no sandbox, no I/O.

Every way a job can end is a ``JobResult`` with its own status, reason and best partial
answer; these tests pin each one down in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from rlm_jobs import prompts
from rlm_jobs.dispatch import InProcessDispatcher
from rlm_jobs.engine import Engine, JobControl
from rlm_jobs.errors import ProviderError, SandboxError
from rlm_jobs.journal import MemoryJournals
from rlm_jobs.loop import run_loop, run_loop_with_trajectory
from rlm_jobs.models import ContextRef, JobSpec, JobStatus, Limits, UsageMeter
from rlm_jobs.sandboxes.base import SubcallHandler
from sandbox.records import CellResult
from tests.support.completers import CONTEXT, RootOrSub, ScriptedCompleter, block


@dataclass(eq=False)  # hashable by identity: the loop keeps open REPLs in a set
class FakeRepl:
    """Runs each cell through ``cell`` (code -> outcome) and records what it was given."""

    cell: Callable[[str], CellResult]
    codes: list[str] = field(default_factory=list)
    closed: bool = False

    def run_cell(self, code: str, *, timeout_s: float, max_output_chars: int) -> CellResult:
        self.codes.append(code)
        return self.cell(code)

    def close(self) -> None:
        self.closed = True


def printed(text: str) -> CellResult:
    return CellResult(stdout=text, stderr="")


def spec(**limits: object) -> JobSpec:
    return JobSpec(
        query="What is the code?",
        context=CONTEXT,
        model="scripted/test",
        limits=Limits(**limits),  # type: ignore[arg-type]
    )


def run(
    completer: ScriptedCompleter,
    repl: FakeRepl,
    job: JobSpec,
    control: JobControl | None = None,
) -> tuple[object, list[dict[str, object]]]:
    journals = MemoryJournals()
    engine = Engine(
        dispatcher=InProcessDispatcher(completer, journals.calls, concurrency=1),
        repl_factory=lambda context, handler, seed=0, tools=None: repl,
        store_context=lambda value: CONTEXT,
        journals=journals,
    )
    result, trajectory = run_loop_with_trajectory(
        job, "job-1", engine, control or JobControl.for_root(job)
    )
    return result, trajectory.entries


# ---- the ways a job ends ---------------------------------------------------------------


def test_the_answer_dict_ends_the_job() -> None:
    # Given a model that sets answer["ready"] in its first cell
    repl = FakeRepl(lambda code: CellResult(stdout="", stderr="", final="42", partial="42"))
    completer = ScriptedCompleter([block('answer["content"] = "42"; answer["ready"] = True')])
    # When the job runs
    result, entries = run(completer, repl, spec())
    # Then it completes with that answer after one turn, and the REPL is closed
    assert (result.status, result.answer, result.iterations) == (JobStatus.COMPLETED, "42", 1)
    assert repl.closed
    assert [e["type"] for e in entries] == ["metadata", "iteration"]
    assert entries[1]["final_answer"] == "42"


def test_final_in_prose_ends_the_job_without_running_code() -> None:
    repl = FakeRepl(lambda code: printed("unused"))
    completer = ScriptedCompleter(["I know it.\nFINAL(the code is 7)"])
    result, _ = run(completer, repl, spec())
    assert (result.status, result.answer) == (JobStatus.COMPLETED, "the code is 7")
    assert repl.codes == []


def test_final_var_in_prose_is_resolved_by_the_repl() -> None:
    # Given a model that names a variable in prose after computing it in a cell
    def cell(code: str) -> CellResult:
        if code == "FINAL_VAR('found')":
            return CellResult(stdout="", stderr="", final="blue")
        return printed("computed")

    repl = FakeRepl(cell)
    completer = ScriptedCompleter([block("found = 'blue'") + "\nFINAL_VAR(found)"])
    result, _ = run(completer, repl, spec())
    # Then the REPL's own FINAL_VAR resolves it
    assert (result.status, result.answer) == (JobStatus.COMPLETED, "blue")
    assert repl.codes == ["found = 'blue'", "FINAL_VAR('found')"]


def test_running_out_of_iterations_asks_once_more_as_a_user_message() -> None:
    repl = FakeRepl(lambda code: CellResult(stdout="still looking", stderr="", partial="maybe"))
    completer = ScriptedCompleter([block("look()"), block("look()"), "FINAL(probably 3)"])
    result, entries = run(completer, repl, spec(max_iterations=2))
    assert result.status is JobStatus.MAX_ITERATIONS
    assert result.answer == "probably 3"
    assert "2 iterations" in result.reason
    last_prompt = completer.seen[-1]
    assert last_prompt[-1]["role"] == "user"
    assert prompts.LAST_CALL in last_prompt[-1]["content"]
    assert [e["type"] for e in entries] == ["metadata", "iteration", "iteration", "iteration"]


def test_a_last_reply_without_prose_keeps_the_partial_answer() -> None:
    # Our own prompt text is never an answer: a code-only last reply yields the partial one
    repl = FakeRepl(lambda code: CellResult(stdout="", stderr="", partial="half done"))
    completer = ScriptedCompleter([block("work()"), "```repl\nmore()\n```"])
    result, _ = run(completer, repl, spec(max_iterations=1))
    assert (result.status, result.answer) == (JobStatus.MAX_ITERATIONS, "half done")


def test_consecutive_failing_cells_end_the_job() -> None:
    repl = FakeRepl(lambda code: CellResult(stdout="", stderr="", error="NameError: x"))
    completer = ScriptedCompleter([block("x")] * 3)
    result, _ = run(completer, repl, spec(max_consecutive_errors=3))
    assert result.status is JobStatus.ERROR_LIMIT
    assert "3 cells in a row failed" in result.reason
    assert result.iterations == 3


def test_a_good_cell_resets_the_error_count() -> None:
    outcomes = iter(
        [
            CellResult(stdout="", stderr="", error="boom"),
            printed("ok"),
            CellResult(stdout="", stderr="", error="boom"),
            CellResult(stdout="", stderr="", final="done"),
        ]
    )
    repl = FakeRepl(lambda code: next(outcomes))
    completer = ScriptedCompleter([block("a()")] * 4)
    result, _ = run(completer, repl, spec(max_consecutive_errors=2))
    assert (result.status, result.answer) == (JobStatus.COMPLETED, "done")


def test_a_timed_out_cell_counts_as_an_error() -> None:
    repl = FakeRepl(lambda code: CellResult(stdout="", stderr="", timed_out=True))
    completer = ScriptedCompleter([block("while True: pass")])
    result, _ = run(completer, repl, spec(max_consecutive_errors=1))
    assert result.status is JobStatus.ERROR_LIMIT


def test_the_token_cap_stops_the_job_with_its_partial_answer() -> None:
    repl = FakeRepl(lambda code: CellResult(stdout="", stderr="", partial="draft"))
    completer = ScriptedCompleter([block("a()")] * 5, usage=(600, 100, 0.0))
    result, _ = run(completer, repl, spec(max_tokens=1000))
    # 700 tokens after the first call, 1,400 after the second: the check before the third stops
    assert result.status is JobStatus.TOKEN_LIMIT
    assert result.answer == "draft"
    assert result.usage.total_tokens == 1400
    assert "cap is 1,000" in result.reason


def test_the_cost_cap_stops_the_job() -> None:
    repl = FakeRepl(lambda code: printed("working"))
    completer = ScriptedCompleter([block("a()")] * 5, usage=(1, 1, 0.02))
    result, _ = run(completer, repl, spec(max_cost_usd=0.03))
    assert result.status is JobStatus.BUDGET_EXCEEDED
    assert result.usage.cost_usd == pytest.approx(0.04)


def test_the_time_limit_stops_the_job() -> None:
    job = spec(max_timeout_s=5)
    control = JobControl(meter=UsageMeter(), deadline=time.monotonic() - 1)
    result, _ = run(ScriptedCompleter([]), FakeRepl(printed), job, control)
    assert result.status is JobStatus.TIMEOUT
    assert "5 s" in result.reason


def test_a_cancel_stops_the_job_before_its_next_step() -> None:
    calls = ScriptedCompleter([block("a()")] * 3)
    flags = iter([None, None, "cancelled by user"])
    job = spec()
    control = JobControl(
        meter=UsageMeter(), deadline=time.monotonic() + 60, cancelled=lambda: next(flags, "x")
    )
    result, _ = run(calls, FakeRepl(lambda code: printed("...")), job, control)
    assert (result.status, result.reason) == (JobStatus.CANCELLED, "cancelled by user")


def test_a_provider_failure_fails_the_job_with_its_message() -> None:
    completer = ScriptedCompleter([ProviderError("401: invalid key", status_code=401)])
    result, _ = run(completer, FakeRepl(printed), spec())
    assert result.status is JobStatus.FAILED
    assert result.reason == "root model call failed: 401: invalid key"


def test_a_sandbox_failure_fails_the_job() -> None:
    def broken(code: str) -> CellResult:
        raise SandboxError("runtime died")

    result, _ = run(ScriptedCompleter([block("a()")]), FakeRepl(broken), spec())
    assert (result.status, result.reason) == (JobStatus.FAILED, "sandbox failed: runtime died")


def test_a_sandbox_closed_by_a_cancel_reads_as_cancelled() -> None:
    state = {"cancelled": None}

    def closed(code: str) -> CellResult:
        state["cancelled"] = "cancelled by user"
        raise SandboxError("the sandbox session was closed while a cell was running")

    job = spec()
    control = JobControl(
        meter=UsageMeter(), deadline=time.monotonic() + 60, cancelled=lambda: state["cancelled"]
    )
    result, _ = run(ScriptedCompleter([block("a()")]), FakeRepl(closed), job, control)
    assert result.status is JobStatus.CANCELLED


def test_a_bug_fails_the_job_instead_of_escaping() -> None:
    completer = ScriptedCompleter([RuntimeError("unexpected")])
    result, _ = run(completer, FakeRepl(printed), spec())
    assert result.status is JobStatus.FAILED
    assert "internal error" in result.reason and "unexpected" in result.reason


# ---- what the model reads ----------------------------------------------------------------


def test_long_output_is_cut_and_says_how_much() -> None:
    repl = FakeRepl(lambda code: printed("x" * 500))
    completer = ScriptedCompleter([block("print(big)"), "FINAL(done)"])
    run(completer, repl, spec(max_output_chars=100))
    feedback = completer.seen[1][-1]["content"]
    assert "x" * 100 in feedback and "x" * 101 not in feedback
    assert "400 more characters not shown" in feedback


def test_a_reply_without_code_is_told_so() -> None:
    completer = ScriptedCompleter(["Thinking...", "FINAL(ok)"])
    result, _ = run(completer, FakeRepl(printed), spec())
    assert result.status is JobStatus.COMPLETED
    assert "no ```repl``` block" in completer.seen[1][-1]["content"]


def test_usage_counts_every_root_call() -> None:
    completer = ScriptedCompleter([block("a()"), "FINAL(x)"], usage=(100, 20, 0.5))
    result, _ = run(completer, FakeRepl(printed), spec())
    assert (result.usage.calls, result.usage.total_tokens) == (2, 240)
    assert result.usage.cost_usd == pytest.approx(1.0)


def test_sub_calls_reach_the_dispatcher_through_the_handler() -> None:
    # Given a cell that makes a batched sub-call through the handler the loop passes the REPL
    class SubRepl(FakeRepl):
        handler: SubcallHandler | None = None

    from sandbox.wire import SubcallRequest

    repl = SubRepl(lambda code: printed(""))

    def cell(code: str) -> CellResult:
        assert repl.handler is not None
        request = SubcallRequest(seq=0, id="r1", kind="llm", prompts=["a", "b"], model=None)
        outcomes = repl.handler(request)
        return CellResult(stdout="", stderr="", final="|".join(o.text for o in outcomes))

    repl.cell = cell
    completer = ScriptedCompleter([block("llm_query_batched(['a', 'b'])"), "sub a", "sub b"])
    journals = MemoryJournals()
    engine = Engine(
        dispatcher=InProcessDispatcher(completer, journals.calls, concurrency=1),
        repl_factory=lambda context, handler, seed=0, tools=None: (
            setattr(repl, "handler", handler),
            repl,
        )[1],
        store_context=lambda value: CONTEXT,
        journals=journals,
    )
    job = spec()
    result = run_loop(job, "job-2", engine, JobControl.for_root(job))
    # Then the answers come back in order and their usage is counted in the job's
    assert (result.status, result.answer) == (JobStatus.COMPLETED, "sub a|sub b")
    assert result.usage.calls == 3


# ---- resuming from the journal ------------------------------------------------------------


@dataclass(eq=False)
class AskingRepl(FakeRepl):
    """A REPL whose cells named ``ask(...)`` make a batched sub-call through the handler."""

    handler: SubcallHandler | None = None
    prompts: Callable[[], list[str]] = lambda: ["a", "b"]


def asking_engine(
    root: ScriptedCompleter, sub: ScriptedCompleter, journals: MemoryJournals, repl: AskingRepl
) -> Engine:
    from sandbox.wire import SubcallRequest

    def cell(code: str) -> CellResult:
        if code != "ask()":
            return printed(f"ran {code}")
        assert repl.handler is not None
        request = SubcallRequest(seq=0, id="r", kind="llm", prompts=repl.prompts(), model=None)
        return printed(" ".join(r.text for r in repl.handler(request)))

    repl.cell = cell

    def open_repl(
        context: ContextRef, handler: SubcallHandler, seed: int = 0, tools: object = None
    ) -> AskingRepl:
        repl.handler = handler
        return repl

    return Engine(
        dispatcher=InProcessDispatcher(RootOrSub(root, sub), journals.calls, concurrency=1),
        repl_factory=open_repl,
        store_context=lambda value: CONTEXT,
        journals=journals,
    )


def first_run_dies_before_its_last_turn(journals: MemoryJournals) -> None:
    root = ScriptedCompleter([block("look()"), block("ask()"), RuntimeError("worker died")])
    sub = ScriptedCompleter(["A", "B"], usage=(3, 1, 0.0001))
    job = spec()
    result = run_loop(
        job,
        "job-r",
        asking_engine(root, sub, journals, AskingRepl(printed)),
        JobControl.for_root(job),
    )
    assert result.status is JobStatus.FAILED  # the process would have died here
    assert sub.replies == []


def test_a_resumed_job_replays_its_journal_and_pays_nothing_twice() -> None:
    # Given a run that got two replies and both sub-call answers, then died
    journals = MemoryJournals()
    first_run_dies_before_its_last_turn(journals)
    # When the job runs again with a model that has only the last reply left to give
    root = ScriptedCompleter(["FINAL(A B)"])
    sub = ScriptedCompleter([])
    repl = AskingRepl(printed)
    job = spec()
    result, trajectory = run_loop_with_trajectory(
        job, "job-r", asking_engine(root, sub, journals, repl), JobControl.for_root(job)
    )
    # Then the earlier turns came from the journal, the cells ran again in a fresh REPL, the
    # sub-calls were answered from the stored results, and usage counts every call once
    assert (result.status, result.answer) == (JobStatus.COMPLETED, "A B")
    assert len(root.seen) == 1 and sub.seen == []
    assert repl.codes == ["look()", "ask()"]
    assert result.usage.calls == 3 + 2
    assert result.usage.total_tokens == 3 * 15 + 2 * 4
    iterations = [e for e in trajectory.entries if e["type"] == "iteration"]
    assert [e.get("replayed", False) for e in iterations] == [True, True, False]
    assert "3 steps replayed" in iterations[2]["resumed"]
    # The prompt the model saw last is the one the first run would have sent
    assert "A B" in root.seen[0][-1]["content"]


def test_a_cell_that_asks_something_new_resumes_live_from_there_and_says_so() -> None:
    journals = MemoryJournals()
    first_run_dies_before_its_last_turn(journals)
    # The resumed cell's prompt differs (it depends on the time, say)
    root = ScriptedCompleter(["FINAL(done)"])
    sub = ScriptedCompleter(["C"], usage=(3, 1, 0.0001))
    repl = AskingRepl(printed, prompts=lambda: ["a", f"b at {time.time()}"])
    job = spec()
    result, trajectory = run_loop_with_trajectory(
        job, "job-r", asking_engine(root, sub, journals, repl), JobControl.for_root(job)
    )
    assert (result.status, result.answer) == (JobStatus.COMPLETED, "done")
    # "a" is the same question at the same place: its stored answer is reused; the new one is asked
    assert len(sub.seen) == 1
    assert sub.seen[0][-1]["content"].startswith("b at ")
    iterations = [e for e in trajectory.entries if e["type"] == "iteration"]
    assert [e.get("replayed", False) for e in iterations] == [True, True, False]
    assert "replay ended at step 3" in iterations[1]["resumed"]
