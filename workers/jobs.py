"""Running one job inside an orchestrator task: lease, loop, once-only result.

A duplicate delivery (the broker's visibility timeout, a requeue after a crash) finds the
lease taken or the result written and does nothing. Progress goes to the job's record and,
as ``task-progress`` events, to Flower.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from pydantic import ValidationError

from rlm_jobs.engine import JobControl, LoopObserver
from rlm_jobs.errors import JobHandedOver, StorageError
from rlm_jobs.models import JobResult, JobSpec, JobStatus
from rlm_jobs.sessions import runner
from rlm_jobs.store import Store
from workers.base import RLMTask
from workers.leases import JobLease
from workers.messages import valid_id
from workers.monitoring import progress_event
from workers.names import RUN_JOB_TASK
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

# (event type, fields) -> None: how progress reaches Flower.
EmitEvent = Callable[[str, dict[str, Any]], None]


def task_emitter(task: Task) -> EmitEvent:
    """Send task events from any thread: the request context is thread-local."""
    task_id = task.request.id
    hostname = task.request.hostname

    def emit(event_type: str, fields: dict[str, Any]) -> None:
        try:
            with task.app.events.default_dispatcher(hostname=hostname) as dispatcher:
                dispatcher.send(event_type, uuid=task_id, **fields)
        except Exception:  # progress is best effort; the job must not fail for it
            log.exception("could not send %s for task %s", event_type, task_id)

    return emit


@shared_task(name=RUN_JOB_TASK, bind=True, base=RLMTask)
def run_job(self: RLMTask, job_id: str) -> str:
    """Run the RLM loop of one job; its result goes to the job record, not to Celery."""
    try:
        job_id = valid_id(job_id, "job id")
    except ValueError as exc:
        log.error("rejected orchestrate message: %s", exc)
        return f"rejected: {exc}"
    runtime = self.runtime
    try:
        outcome = execute_job(job_id, runtime, task_emitter(self))
    except Exception as exc:  # a bug or an outage: the job must end, not stay QUEUED
        log.exception("job %s: orchestrator error", job_id)
        session_id = None
        with contextlib.suppress(Exception):  # a record it cannot read still gets its result
            session_id = runtime.store.get(job_id).session_id
        with contextlib.suppress(Exception):
            failed = JobResult(
                job_id=job_id, status=JobStatus.FAILED, reason=f"internal error: {exc!r}"
            )
            runtime.finish_job(failed, session_id=session_id)
        return f"failed: {exc!r}"
    log.info("job %s: %s", job_id, outcome)
    return outcome


class ServiceObserver(LoopObserver):
    """Writes records, trajectories and progress of a job tree to Redis and Flower."""

    def __init__(self, store: Store, emit: EmitEvent, interval_s: float) -> None:
        self._store = store
        self._emit = emit
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}

    def trajectory_sink(self, job_id: str) -> Callable[[dict[str, Any]], None]:
        return lambda entry: self._store.append_trajectory(job_id, entry)

    def job_started(self, job_id: str, spec: JobSpec) -> None:
        if spec.depth > 0:  # the root's record exists; a child's is made as it starts
            self._store.create_job(job_id, spec)
            self._store.mark_running(job_id, "in-process child", leased=False)

    def progress(self, job_id: str, spec: JobSpec, counters: dict[str, Any]) -> None:
        now = time.monotonic()
        iteration = int(counters.get("iteration", 0))
        with self._lock:
            last_at, last_iteration = self._last.get(job_id, (0.0, -1))
            if iteration == last_iteration and now - last_at < self._interval_s:
                return
            self._last[job_id] = (now, iteration)
        self._store.set_progress(job_id, counters)
        self._emit("task-progress", progress_event(job_id, counters))

    def job_finished(self, job_id: str, spec: JobSpec, result: JobResult) -> None:
        if spec.depth > 0:
            self._store.finish(result)
        with self._lock:
            self._last.pop(job_id, None)


def execute_job(job_id: str, runtime: WorkerRuntime, emit: EmitEvent) -> str:
    """Run a job to its one result; returns what happened, for logs and Flower."""
    store = runtime.store
    settings = runtime.settings
    try:
        record = store.get(job_id)
    except StorageError as exc:
        return f"rejected: {exc}"
    holder = f"{runtime.worker_id}:{time.monotonic_ns()}"
    if not store.acquire_lease(job_id, holder, settings.lease_ttl_s):
        return f"skipped: job {job_id} is running on {store.lease_holder(job_id)}"
    keeper = runtime.lease_keeper()
    lease = keeper.register(job_id, holder)
    try:
        # A session takes its next question as its job ends (one transaction), however
        # an orchestrator ends it.
        session_id = record.session_id
        attempt = store.mark_running(job_id, runtime.worker_id)
        if attempt is None:  # cancelled while queued (JobHandle.cancel), say
            if session_id is not None:
                runtime.sessions.release(session_id, job_id)
            return f"skipped: job {job_id} already finished"
        if attempt > settings.max_attempts:
            return _finish_early(
                runtime, job_id, JobStatus.FAILED,
                f"gave up after {settings.max_attempts} attempts: its workers kept dying",
                session_id,
            )  # fmt: skip
        try:
            spec = record.spec
        except ValidationError as exc:
            return _finish_early(runtime, job_id, JobStatus.FAILED, f"invalid job spec: {exc}")
        # The keeper polls for cancels from now on; one cancelled while queued stops here.
        reason = lease.cancelled() or store.cancel_reason(job_id)
        if reason:
            return _finish_early(runtime, job_id, JobStatus.CANCELLED, reason, session_id)
        spent = runtime.controls.budgets.exhausted(spec.batch_id) if spec.batch_id else None
        if spent:  # its batch's budget ran out while it was queued: it ends without running
            return _finish_early(runtime, job_id, JobStatus.BUDGET_EXCEEDED, spent, session_id)
        store.reset_trajectory(job_id)
        control = JobControl.for_root(
            spec,
            cancelled=lease.cancelled,
            handover=lease.handover,
            observer=ServiceObserver(store, emit, settings.progress_interval_s),
        )
        lease.attach(control)
        try:
            # A job of a session first replays the session's earlier jobs (rlm_jobs.sessions).
            result = runner.run_job(spec, job_id, runtime.engine(), control, store)
        except JobHandedOver as stop:
            return _hand_back(runtime, job_id, lease, stop.reason)
        if lease.lost:
            return f"abandoned: lost the lease of job {job_id}; another worker runs it"
        stored = runtime.finish_job(result, session_id=session_id)
        return (
            f"{result.status.value} (attempt {attempt})" if stored else "duplicate: result existed"
        )
    finally:
        keeper.unregister(lease)


def _hand_back(runtime: WorkerRuntime, job_id: str, lease: JobLease, reason: str) -> str:
    """Queue the job again for another worker, unless another already has it."""
    if lease.lost:
        return f"abandoned: lost the lease of job {job_id}; another worker runs it"
    if not runtime.store.hand_back(job_id, lease.holder):
        return f"handed over: job {job_id} ({reason}); it finished or moved meanwhile"
    runtime.requeue(job_id)
    log.warning("job %s handed back to the queue: %s", job_id, reason)
    return f"handed over: {reason}; another worker resumes it from its journal"


def _finish_early(
    runtime: WorkerRuntime,
    job_id: str,
    status: JobStatus,
    reason: str,
    session_id: str | None = None,
) -> str:
    result = JobResult(job_id=job_id, status=status, reason=reason)
    runtime.finish_job(result, session_id=session_id)
    return f"{status.value}: {reason}"
