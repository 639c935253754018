"""A session's job on any orchestrator: replay the earlier jobs, then answer live.

Nothing of a session lives in an orchestrator between its jobs, so the next job may run
anywhere: it opens a fresh REPL and runs each earlier job of the session again from its
journal (``replay_loop``: every root reply, sub-call, child and tool result is stored,
so nothing reaches a provider or a tool), which rebuilds the REPL's variables and the
conversation exactly as the jobs left them; then it runs itself live. A job resumed after
its orchestrator died does the same, then replays its own journal as any job does.

A replay that cannot reach its job's end (a cell whose code is not deterministic asked
something else, or a record that has expired) stops there; the live job is told which
questions were rebuilt only in part, so the model knows what may be missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

from rlm_jobs.engine import Engine, JobControl, LoopObserver
from rlm_jobs.loop import replay_loop, run_loop
from rlm_jobs.models import JobResult, JobSpec, UsageMeter
from rlm_jobs.sessions.repl import SessionRepl
from rlm_jobs.store import Store


def run_job(
    spec: JobSpec, job_id: str, engine: Engine, control: JobControl, store: Store
) -> JobResult:
    """Run a recorded job: on its own, or as the next question of its session."""
    if spec.session is None:
        return run_loop(spec, job_id, engine, control)
    records = {r.job_id: r for r in store.get_many(spec.session.earlier)}
    earlier: list[tuple[str, JobSpec | None]] = []
    for earlier_id in spec.session.earlier:
        record = records.get(earlier_id)
        try:
            earlier.append((earlier_id, record.spec if record is not None else None))
        except ValidationError:
            earlier.append((earlier_id, None))
    return run_session_job(spec, job_id, engine, control, earlier)


def run_session_job(
    spec: JobSpec,
    job_id: str,
    engine: Engine,
    control: JobControl,
    earlier: Sequence[tuple[str, JobSpec | None]],
) -> JobResult:
    """Replay ``earlier`` (job id, spec or None if its record is gone) into a fresh REPL,
    then run ``spec`` live in it."""
    session = SessionRepl(engine.repl_factory, engine.tools.specs if engine.tools else ())
    try:
        partial: list[str] = []
        for position, (earlier_id, earlier_spec) in enumerate(earlier, start=1):
            control.observer.progress(
                job_id,
                spec,
                {"iteration": 0, "replaying": True, "session_replay": f"{position}/{len(earlier)}"},
            )
            if earlier_spec is None:
                partial.append(f"question {position} (its record has expired)")
                session.index += 1
                continue
            ended = replay_loop(earlier_spec, earlier_id, engine, _replaying(control), session)
            if ended is not None:
                partial.append(f"question {position} (up to {ended})")
        session.rebuilt = _rebuilt_note(partial)
        session.replayed = len(earlier)
        return run_loop(spec, job_id, engine, control, session=session)
    finally:
        session.close()


def _replaying(control: JobControl) -> JobControl:
    """A replay's control: the live job's clock, cancel and hand-over; its own meter (a
    replay spends nothing) and no observer (an earlier job's records are final)."""
    return JobControl(
        meter=UsageMeter(),
        deadline=control.deadline,
        cancelled=control.cancelled,
        handover=control.handover,
        observer=LoopObserver(),
        repls=control.repls,
    )


def _rebuilt_note(partial: list[str]) -> str | None:
    if not partial:
        return None
    return (
        "The REPL was rebuilt by running the earlier questions' cells again; this could only "
        f"be done in part for {'; '.join(partial)}, so variables set after that point may be "
        "missing: check with SHOW_VARS() and recompute what you need."
    )
