"""The RLM iteration loop: root model ⇄ sandbox REPL until an answer or a limit.

``run_loop`` receives everything it uses (``Engine``, ``JobControl``) and never imports
Celery, so it runs the same in library mode, in tests and inside an orchestrator task.
Every way a job ends is a ``JobResult`` with its own status, a readable reason and the best
partial answer; nothing but a bug escapes as an exception.

A job of a session (``session``: a ``SessionRepl``) continues its conversation and runs in
its REPL, which it borrows rather than opens. A ``replay_only`` run (a session's earlier
job, rebuilding that state) never calls anything live: it stops where its journal ends.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from rlm_jobs import parsing, prompts
from rlm_jobs.answers import AnswerGate
from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.engine import Engine, JobControl
from rlm_jobs.errors import (
    JobHandedOver,
    JobStopped,
    ProviderError,
    ReplayEnded,
    RLMJobsError,
    SandboxError,
)
from rlm_jobs.models import JobResult, JobSpec, JobStatus, split_model_name
from rlm_jobs.sandboxes.base import Repl
from rlm_jobs.sessions.repl import SessionRepl
from rlm_jobs.subcalls import SubcallHandlerForJob
from rlm_jobs.tools.calls import ToolCallsForJob
from rlm_jobs.trajectory import Trajectory, code_block_entry
from sandbox.records import NOT_RUN_PREFIX, CellResult

log = logging.getLogger(__name__)


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    return f"{text[:limit]}\n... [output truncated: {cut:,} more characters not shown]"


def render_outcome(outcome: CellResult, limit: int) -> str:
    parts = [outcome.stdout]
    if outcome.stderr:
        parts.append(f"[stderr]\n{outcome.stderr}")
    if outcome.error:
        parts.append(outcome.error)
    if outcome.note:
        parts.append(f"[note] {outcome.note}")
    text = "\n".join(p for p in parts if p)
    return truncate(text, limit) if text else "(no output)"


@dataclass
class _State:
    iteration: int = 0
    consecutive_errors: int = 0
    partial: str | None = None
    messages: list[ChatMessage] = field(default_factory=list)
    # The last root reply came from the response cache.
    cached: bool = False


class _Loop:
    def __init__(
        self,
        spec: JobSpec,
        job_id: str,
        engine: Engine,
        control: JobControl,
        *,
        session: SessionRepl | None = None,
        replay_only: bool = False,
    ) -> None:
        self.spec = spec
        self.job_id = job_id
        self.engine = engine
        self.control = control
        self.session = session
        self.limits = spec.limits
        self.trajectory: Trajectory = control.new_trajectory(job_id)
        self.journal = engine.journals.open(job_id, replay_only=replay_only)
        self.state = _State()
        self.started = time.monotonic()
        # Whether the current turn's reply came from the journal (a resumed job's replay).
        self.replayed_turn = False
        self.answers = AnswerGate.for_spec(spec)
        self.handler = SubcallHandlerForJob(
            spec=spec,
            job_id=job_id,
            engine=engine,
            control=control,
            journal=self.journal,
            trajectory=self.trajectory,
            run_child=run_loop,
            report=self.report,
        )
        self.tools: ToolCallsForJob | None = None
        if engine.tools is not None:
            self.tools = ToolCallsForJob(
                toolbox=engine.tools,
                job_id=job_id,
                journal=self.journal,
                calls=engine.journals.calls,
                trajectory=self.trajectory,
                report=self.report,
                handover=control.handover,
            )

    # ---- limits ---------------------------------------------------------------------

    def check(self) -> None:
        handover = self.control.handover()
        if handover:
            raise JobHandedOver(handover)
        reason = self.control.cancelled()
        if reason:
            raise JobStopped(JobStatus.CANCELLED, reason)
        if time.monotonic() >= self.control.deadline:
            raise JobStopped(
                JobStatus.TIMEOUT,
                f"the job ran past its time limit ({self.limits.max_timeout_s:g} s)",
            )
        over = self.control.meter.exceeded()
        if over:
            raise JobStopped(*over)

    def report(self) -> None:
        usage = self.control.meter.snapshot()
        tools = self.tools.counters if self.tools is not None else None
        self.control.observer.progress(
            self.job_id,
            self.spec,
            {
                "iteration": self.state.iteration,
                "max_iterations": self.limits.max_iterations,
                "subcalls_done": self.handler.counters.done,
                "subcalls_in_flight": self.handler.counters.in_flight,
                "tokens": usage.total_tokens,
                "cost_usd": usage.cost_usd,
                "depth": self.spec.depth,
                # A resumed job replaying its journal: nothing it replays is paid again.
                "replaying": self.journal.replaying,
                "cached_calls": usage.cached_calls,
                "subcalls_refused": self.handler.counters.refused,
                "rate_limited_s": round(self.handler.counters.rate_limited_s, 3),
                **(
                    {
                        "tool_calls": tools.done,
                        "tool_calls_failed": tools.failed,
                        "tool_calls_in_flight": tools.in_flight,
                    }
                    if tools is not None
                    else {}
                ),
            },
        )

    # ---- model and cells ------------------------------------------------------------

    def ask_model(self) -> str:
        """The root model's reply: from the journal while replaying the same requests."""
        self.check()
        result, self.replayed_turn = self.handler.ask_root(self.state.messages)
        self.state.cached = result.cached
        if not result.ok:
            if result.refusal:  # refused before it started: the job must stop
                raise JobStopped(
                    JobStatus(result.refusal), result.text.removeprefix(NOT_RUN_PREFIX)
                )
            self.check()  # stopped while it waited (a cancel, a limit, a hand-over)
            raise ProviderError(result.text.removeprefix("Error: "))
        return result.text

    def run_cell(self, repl: Repl, code: str) -> CellResult:
        self.check()
        remaining = self.control.deadline - time.monotonic()
        outcome = repl.run_cell(
            code,
            timeout_s=max(0.1, min(self.limits.cell_timeout_s, remaining)),
            max_output_chars=self.limits.max_output_chars,
        )
        if outcome.partial:
            self.state.partial = outcome.partial
        if self.journal.replay_ended is not None:  # the cell met what its journal lacks
            raise ReplayEnded(self.journal.replay_ended)
        return outcome

    def record(
        self,
        prompt: list[ChatMessage],
        reply: str,
        blocks: list[dict[str, Any]],
        final: str | None,
        started: float,
    ) -> None:
        extra: dict[str, Any] = {}
        if self.state.cached:  # the root model's reply came from the response cache
            extra["cached"] = True
        if self.replayed_turn:
            extra["replayed"] = True
        note = self.journal.take_note()
        if note:
            extra["resumed"] = note
        self.trajectory.iteration(
            iteration=self.state.iteration,
            prompt=[{"role": m["role"], "content": m["content"]} for m in prompt],
            response=reply,
            code_blocks=blocks,
            final_answer=final,
            iteration_time=time.monotonic() - started,
            usage=self.control.meter.snapshot().summary(),
            **extra,
        )

    def turn(self, repl: Repl) -> str | None:
        """One model reply and its cells; returns the final answer if the job is done."""
        started = time.monotonic()
        prompt_snapshot = list(self.state.messages)
        reply = self.ask_model()
        self.state.messages.append({"role": "assistant", "content": reply})
        feedback: list[tuple[str, str]] = []
        blocks: list[dict[str, Any]] = []
        final: str | None = None
        try:
            for code in parsing.code_blocks(reply):
                outcome = self.run_cell(repl, code)
                blocks.append(
                    code_block_entry(
                        code,
                        stdout=outcome.stdout,
                        stderr=outcome.stderr,
                        error=outcome.error,
                        note=outcome.note,
                        execution_time=outcome.duration_s,
                        rlm_calls=self.trajectory.take_subcalls(),
                    )
                )
                feedback.append((code, render_outcome(outcome, self.limits.max_output_chars)))
                if outcome.final is not None:
                    final = outcome.final
                    return final
                self.count_error(outcome)
            final = self.final_from_prose(repl, reply)
            if final is not None:
                return final
            self.state.messages.append(
                {
                    "role": "user",
                    "content": prompts.turn_feedback(
                        feedback, self.state.iteration, self.limits.max_iterations
                    ),
                }
            )
            return None
        finally:
            self.record(prompt_snapshot, reply, blocks, final, started)

    def count_error(self, outcome: CellResult) -> None:
        if outcome.error or outcome.timed_out:
            self.state.consecutive_errors += 1
            if self.state.consecutive_errors >= self.limits.max_consecutive_errors:
                raise JobStopped(
                    JobStatus.ERROR_LIMIT,
                    f"{self.state.consecutive_errors} cells in a row failed "
                    f"(limit {self.limits.max_consecutive_errors})",
                )
        else:
            self.state.consecutive_errors = 0

    def accept_final(self, answer: str) -> bool:
        """A final answer ends the job unless it breaks the job's answer schema: then the
        model is told why and gets another turn (``AnswerGate`` raises when out of them)."""
        self.state.partial = answer  # the raw answer, kept if the schema rejects it for good
        feedback = self.answers.review(answer)
        if feedback is None:
            return True
        self.state.messages.append({"role": "user", "content": feedback})
        return False

    def final_from_prose(self, repl: Repl, reply: str) -> str | None:
        found = parsing.final_in_text(reply)
        if found is None:
            return None
        if found.var_name is None:
            return found.text
        # Resolve FINAL_VAR(name) written in prose with the REPL's own FINAL_VAR.
        outcome = self.run_cell(repl, f"FINAL_VAR({found.var_name!r})")
        return outcome.final

    def last_call(self, repl: Repl) -> str | None:
        """Iterations ran out: one more reply, asked for with a user message."""
        self.state.messages.append({"role": "user", "content": prompts.last_call_message()})
        started = time.monotonic()
        prompt_snapshot = list(self.state.messages)
        reply = self.ask_model()
        answer = self.final_from_prose(repl, reply)
        if answer is None:
            stripped = parsing.prose(reply).strip()
            answer = stripped or None
        self.record(prompt_snapshot, reply, [], answer, started)
        return answer

    # ---- the job ----------------------------------------------------------------------

    def run(self) -> JobResult:
        self.control.observer.job_started(self.job_id, self.spec)
        provider, model_name = split_model_name(self.spec.model)
        self.trajectory.metadata(
            job_id=self.job_id,
            root_model=self.spec.model,
            max_depth=self.limits.max_depth,
            max_iterations=self.limits.max_iterations,
            backend=provider,
            backend_kwargs={"model_name": model_name},
            environment_type="rlm-jobs",
            environment_kwargs={},
            other_backends=[self.spec.sub_model] if self.spec.sub_model else None,
            depth=self.spec.depth,
            parent_id=self.spec.parent_id,
            **self.session_metadata(),
        )
        self.state.messages = self.first_messages()
        try:
            result = self._run()
        except JobHandedOver:
            raise  # no result: the next run of the job resumes from its journal
        except Exception as exc:  # a bug must not take the worker down with it
            log.exception("job %s crashed", self.job_id)
            result = self.result(JobStatus.FAILED, f"internal error: {exc!r}", self.state.partial)
        if self.session is not None:
            self.session.finished(self.state.messages, result)
        self.control.observer.job_finished(self.job_id, self.spec, result)
        return result

    def session_metadata(self) -> dict[str, Any]:
        if self.session is None:
            return {}
        extra: dict[str, Any] = {"session_index": self.session.index}
        if self.spec.session is not None:
            extra["session_id"] = self.spec.session.id
        if self.session.replayed:
            extra["session_replayed"] = self.session.replayed
        if self.session.rebuilt:
            extra["session_rebuilt"] = self.session.rebuilt
        return extra

    def first_messages(self) -> list[ChatMessage]:
        spec = self.spec
        tools = self.engine.tools.specs if self.engine.tools is not None else []
        system: ChatMessage = {
            "role": "system",
            "content": prompts.system_prompt(spec.context, tools),
        }
        session = self.session
        if session is None or session.index == 0:
            first = prompts.first_user_message(
                spec.query, spec.context, spec.root_prompt, spec.answer_schema
            )
            return [system, {"role": "user", "content": first}]
        followup = prompts.followup_user_message(
            spec.query,
            spec.context,
            session.index,
            root_prompt=spec.root_prompt,
            answer_schema=spec.answer_schema,
            previous_answer=session.previous_answer,
            rebuilt=session.rebuilt,
        )
        return [*(session.messages or [system]), {"role": "user", "content": followup}]

    def open_repl(self) -> Repl:
        # Seeded by the job id: a resumed run's cells draw the same random numbers.
        seed, context = self.journal.seed, self.spec.context
        if self.session is not None:
            return self.session.open_repl(context, self.handler, seed=seed, tools=self.tools)
        return self.engine.repl_factory(context, self.handler, seed=seed, tools=self.tools)

    def _run(self) -> JobResult:
        repl: Repl | None = None
        try:
            repl = self.open_repl()
            self.control.repls.add(repl)
            while self.state.iteration < self.limits.max_iterations:
                self.state.iteration += 1
                self.report()
                answer = self.turn(repl)
                if answer is not None and self.accept_final(answer):
                    return self.result(JobStatus.COMPLETED, "final answer given", answer)
            answer = self.last_call(repl)
            return self.result(
                JobStatus.MAX_ITERATIONS,
                f"used all {self.limits.max_iterations} iterations; answer from a final request",
                answer if answer is not None else self.state.partial,
            )
        except JobStopped as stop:
            return self.result(stop.status, stop.reason, self.state.partial)
        except ReplayEnded as end:  # a replay-only run: the state is rebuilt up to here
            return self.result(JobStatus.FAILED, f"replay ended at {end.reason}", None)
        except JobHandedOver:
            raise
        except ProviderError as exc:
            return self.result(
                JobStatus.FAILED, f"root model call failed: {exc}", self.state.partial
            )
        except SandboxError as exc:
            handover = self.control.handover()
            if handover:  # the sandbox was closed to hand the job over
                raise JobHandedOver(handover) from exc
            cancelled = self.control.cancelled()
            if cancelled:  # the sandbox was stopped because the job was cancelled
                return self.result(JobStatus.CANCELLED, cancelled, self.state.partial)
            return self.result(JobStatus.FAILED, f"sandbox failed: {exc}", self.state.partial)
        except RLMJobsError as exc:
            return self.result(JobStatus.FAILED, str(exc), self.state.partial)
        finally:
            if repl is not None:
                self.control.repls.discard(repl)
                if self.session is None:
                    repl.close()
                else:  # the session keeps it for its next job
                    self.session.release()

    def result(self, status: JobStatus, reason: str, answer: str | None) -> JobResult:
        return JobResult(
            job_id=self.job_id,
            status=status,
            answer=answer,
            structured=self.answers.value if status is JobStatus.COMPLETED else None,
            reason=reason,
            usage=self.control.meter.snapshot(),
            iterations=self.state.iteration,
            execution_time_s=time.monotonic() - self.started,
            depth=self.spec.depth,
        )


def run_loop(
    spec: JobSpec,
    job_id: str,
    engine: Engine,
    control: JobControl,
    *,
    session: SessionRepl | None = None,
) -> JobResult:
    """Run one RLM job (and, through rlm_query, its children) to a result; a job of a
    session runs in its REPL and continues its conversation."""
    return _Loop(spec, job_id, engine, control, session=session).run()


def run_loop_with_trajectory(
    spec: JobSpec,
    job_id: str,
    engine: Engine,
    control: JobControl,
    *,
    session: SessionRepl | None = None,
) -> tuple[JobResult, Trajectory]:
    """Like ``run_loop`` but also returns the root's in-memory trajectory."""
    loop = _Loop(spec, job_id, engine, control, session=session)
    return loop.run(), loop.trajectory


def replay_loop(
    spec: JobSpec, job_id: str, engine: Engine, control: JobControl, session: SessionRepl
) -> str | None:
    """Run a finished job of ``session`` again from its journal only, into the session's
    REPL and conversation; returns why the replay stopped early, or None if it reached the
    job's end. Nothing is called live and nothing is written."""
    loop = _Loop(spec, job_id, engine, control, session=session, replay_only=True)
    loop.run()
    return loop.journal.replay_ended
