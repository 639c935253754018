"""Sessions through the loop's own seams: a scripted completer and an in-process Python
REPL (no sandbox, no I/O). A session's later job continues the conversation in the same
REPL; in the service it first replays the earlier jobs from their journals, which must
rebuild exactly what the live session had, without asking the model anything again."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any

from rlm_jobs import prompts
from rlm_jobs.dispatch import InProcessDispatcher
from rlm_jobs.engine import Engine, JobControl
from rlm_jobs.journal import MemoryJournals
from rlm_jobs.loop import run_loop
from rlm_jobs.models import ContextRef, JobSpec, JobStatus
from rlm_jobs.sandboxes.base import SubcallHandler, ToolHandler
from rlm_jobs.sessions.repl import SessionRepl, conversation_of
from rlm_jobs.sessions.runner import run_session_job
from sandbox.records import CellResult
from sandbox.wire import SubcallRequest
from tests.support.completers import CONTEXT, RootOrSub, ScriptedCompleter, block


@dataclass(eq=False)
class PythonRepl:
    """A REPL that runs cells with exec in one namespace: variables persist, as in a sandbox."""

    handler: SubcallHandler
    namespace: dict[str, Any] = field(default_factory=dict)
    codes: list[str] = field(default_factory=list)
    loads: list[tuple[str, int, int]] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        def llm_query(prompt: str) -> str:
            request = SubcallRequest(seq=0, id="r", kind="llm", prompts=[prompt], model=None)
            return self.handler(request)[0].text

        self.namespace["llm_query"] = llm_query

    def run_cell(self, code: str, *, timeout_s: float, max_output_chars: int) -> CellResult:
        self.codes.append(code)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code, self.namespace)
        return CellResult(stdout=out.getvalue(), stderr="")

    def load_context(self, context: ContextRef, *, index: int, seed: int) -> None:
        self.loads.append((context.sha256[:4], index, seed))

    def close(self) -> None:
        self.closed = True


@dataclass
class Repls:
    opened: list[PythonRepl] = field(default_factory=list)

    def __call__(
        self,
        context: ContextRef,
        handler: SubcallHandler,
        *,
        seed: int = 0,
        tools: ToolHandler | None = None,
    ) -> PythonRepl:
        repl = PythonRepl(handler)
        self.opened.append(repl)
        return repl


def engine(root: ScriptedCompleter, sub: ScriptedCompleter, journals: MemoryJournals) -> Engine:
    return Engine(
        dispatcher=InProcessDispatcher(RootOrSub(root, sub), journals.calls, concurrency=1),
        repl_factory=Repls(),
        store_context=lambda value: CONTEXT,
        journals=journals,
    )


def question(n: int) -> JobSpec:
    context = CONTEXT.model_copy(update={"sha256": f"{n}" * 64})
    return JobSpec(query=f"Question {n}?", context=context, model="scripted/test")


# Each question: one cell, then FINAL in prose. The second and third use the first's `table`.
REPLIES = {
    1: [block("table = {'a': 1}\nprint(llm_query('what is a?'))"), "FINAL(one)"],
    2: [block("table['b'] = 2\nprint(sorted(table))"), "FINAL(two)"],
    3: [block("print(table)"), "FINAL(three)"],
}


def test_a_session_continues_its_conversation_in_one_repl() -> None:
    journals = MemoryJournals()
    root, sub = ScriptedCompleter(REPLIES[1] + REPLIES[2] + REPLIES[3]), ScriptedCompleter(["x"])
    live = engine(root, sub, journals)
    session = SessionRepl(live.repl_factory)
    results = [
        run_loop(question(n), f"job-{n}", live, JobControl.for_root(question(n)), session=session)
        for n in (1, 2, 3)
    ]
    assert [r.answer for r in results] == ["one", "two", "three"]
    (repl,) = live.repl_factory.opened  # type: ignore[attr-defined]
    # One REPL: the third question's cell saw what the first two left
    assert repl.namespace["table"] == {"a": 1, "b": 2}
    assert [(index, seed > 0) for _, index, seed in repl.loads] == [(1, True), (2, True)]
    # The third question's first prompt is the whole conversation, then the follow-up
    third_first = root.seen[4]
    assert third_first[:-1] == [*root.seen[3], {"role": "assistant", "content": "FINAL(two)"}]
    assert third_first[-1]["content"].startswith(f"{prompts.SESSION_NOTE}: it is question 3.")
    assert "Your answer to the previous question was: two" in third_first[-1]["content"]
    assert session.index == 3


def test_replaying_the_earlier_jobs_rebuilds_the_same_state_and_asks_nothing_again() -> None:
    # Given a session whose first two questions were answered (on some orchestrator)
    journals = MemoryJournals()
    first_root = ScriptedCompleter(REPLIES[1] + REPLIES[2] + REPLIES[3])
    first_sub = ScriptedCompleter(["x"])
    live = engine(first_root, first_sub, journals)
    session = SessionRepl(live.repl_factory)
    for n in (1, 2, 3):
        run_loop(question(n), f"job-{n}", live, JobControl.for_root(question(n)), session=session)
    journal_before = {k: list(v) for k, v in journals.logs.items()}
    # When another orchestrator answers the third question with nothing of the session
    root, sub = ScriptedCompleter(list(REPLIES[3])), ScriptedCompleter([])
    fresh = engine(root, sub, journals)
    earlier = [("job-1", question(1)), ("job-2", question(2))]
    spec = question(3)
    result = run_session_job(spec, "job-3b", fresh, JobControl.for_root(spec), earlier)
    # Then the earlier jobs' cells ran again in a fresh REPL, their model calls and
    # sub-calls answered from the journals, and the third question saw exactly what the
    # live session showed it
    assert (result.status, result.answer) == (JobStatus.COMPLETED, "three")
    assert len(root.seen) == 2 and sub.seen == []
    assert root.seen[0] == first_root.seen[4]
    (repl,) = fresh.repl_factory.opened  # type: ignore[attr-defined]
    assert repl.codes[:2] == [
        "table = {'a': 1}\nprint(llm_query('what is a?'))",
        "table['b'] = 2\nprint(sorted(table))",
    ]
    assert repl.closed
    # A replay writes nothing: the earlier journals are as they were
    assert {k: v for k, v in journals.logs.items() if k != "job-3b"} == journal_before


def test_a_replay_that_diverges_stops_there_and_the_next_question_is_told() -> None:
    journals = MemoryJournals()
    asks_the_time = [block("import time\nstamp = llm_query(f'now {time.time()}')"), "FINAL(one)"]
    live = engine(ScriptedCompleter(asks_the_time), ScriptedCompleter(["x"]), journals)
    session = SessionRepl(live.repl_factory)
    run_loop(question(1), "job-1", live, JobControl.for_root(question(1)), session=session)
    root, sub = ScriptedCompleter([block("print(stamp)"), "FINAL(three)"]), ScriptedCompleter([])
    fresh = engine(root, sub, journals)
    spec = question(2)
    earlier = [("job-1", question(1))]
    result = run_session_job(spec, "job-2", fresh, JobControl.for_root(spec), earlier)
    assert result.status is JobStatus.COMPLETED
    # The replayed cell asked something new: it was not sent (nothing runs live in a replay)
    assert sub.seen == [] and len(root.seen) == 2
    # and the cell that asked it got an error slot, which the next question's cell shows
    shown = root.seen[1][-1]["content"]
    assert "Output:\nError: not run: not replayed: step 2: a sub-call request" in shown
    follow_up = root.seen[0][-1]["content"]
    assert "could only be done in part for question 1 (up to step 2: a sub-call request" in (
        follow_up
    )


def test_a_jobs_share_of_the_conversation_ends_with_its_last_reply() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "feedback"},
    ]
    assert conversation_of(messages) == messages[:3]
    assert conversation_of(messages[:2]) == []
