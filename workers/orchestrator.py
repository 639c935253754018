"""Running one job inside an orchestrator task: lease, loop, once-only result.

A job runs only while its worker holds the job's lease, renewed by a watcher thread that
also notices cancellation. A duplicate delivery (the broker's visibility timeout, a
requeue after a crash) finds the lease taken or the result written and does nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from rlm_jobs.engine import JobControl, LoopObserver
from rlm_jobs.errors import StorageError
from rlm_jobs.loop import run_loop
from rlm_jobs.models import JobResult, JobSpec, JobStatus
from rlm_jobs.store import Store
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

# (event type, fields) -> None: how progress reaches Flower.
EmitEvent = Callable[[str, dict[str, Any]], None]


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
        self._emit("task-progress", {"state": "PROGRESS", "job_id": job_id, **counters})

    def job_finished(self, job_id: str, spec: JobSpec, result: JobResult) -> None:
        if spec.depth > 0:
            self._store.finish(result)
        with self._lock:
            self._last.pop(job_id, None)


class LeaseWatcher:
    """Renews the lease and caches the cancel flag; stops the sandboxes on cancel."""

    def __init__(self, store: Store, job_id: str, holder: str, runtime: WorkerRuntime) -> None:
        self._store = store
        self._job_id = job_id
        self._holder = holder
        self._ttl_s = runtime.settings.lease_ttl_s
        self._renew_s = runtime.settings.lease_renew_s
        self._stop = threading.Event()
        self._reason: str | None = None
        self.lost = False
        self.control: JobControl | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"rlm-lease-{job_id[:8]}", daemon=True
        )

    def cancelled(self) -> str | None:
        return self._reason

    def start(self) -> None:
        self._reason = self._store.cancel_reason(self._job_id)
        self._thread.start()

    def _run(self) -> None:
        next_renew = time.monotonic() + self._renew_s
        # Cancellation should feel immediate; a GET every quarter second is cheap.
        while not self._stop.wait(0.25):
            try:
                if self._reason is None:
                    reason = self._store.cancel_reason(self._job_id)
                    if reason is not None:
                        self._reason = reason
                        if self.control is not None:
                            self.control.repls.interrupt()
                if time.monotonic() >= next_renew:
                    next_renew = time.monotonic() + self._renew_s
                    if not self._store.acquire_lease(self._job_id, self._holder, self._ttl_s):
                        self.lost = True
                        self._reason = "lease lost: another worker took the job over"
                        if self.control is not None:
                            self.control.repls.interrupt()
            except Exception:  # Redis hiccup: keep renewing; the TTL covers short outages
                log.exception("lease watcher for %s", self._job_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        if not self.lost:
            self._store.release_lease(self._job_id, self._holder)


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
    watcher = LeaseWatcher(store, job_id, holder, runtime)
    try:
        attempt = store.mark_running(job_id, runtime.worker_id)
        if attempt is None:
            return f"skipped: job {job_id} already finished"
        if attempt > settings.max_attempts:
            return _finish_early(
                store, job_id, JobStatus.FAILED,
                f"gave up after {settings.max_attempts} attempts: its workers kept dying",
            )  # fmt: skip
        try:
            spec = record.spec
        except ValidationError as exc:
            return _finish_early(store, job_id, JobStatus.FAILED, f"invalid job spec: {exc}")
        watcher.start()
        reason = watcher.cancelled()
        if reason:
            return _finish_early(store, job_id, JobStatus.CANCELLED, reason)
        store.reset_trajectory(job_id)
        control = JobControl.for_root(
            spec,
            cancelled=watcher.cancelled,
            observer=ServiceObserver(store, emit, settings.progress_interval_s),
        )
        watcher.control = control
        result = run_loop(spec, job_id, runtime.engine(), control)
        if watcher.lost:
            return f"abandoned: lost the lease of job {job_id}; another worker runs it"
        stored = store.finish(result)
        return (
            f"{result.status.value} (attempt {attempt})" if stored else "duplicate: result existed"
        )
    finally:
        watcher.stop()


def _finish_early(store: Store, job_id: str, status: JobStatus, reason: str) -> str:
    store.finish(JobResult(job_id=job_id, status=status, reason=reason))
    return f"{status.value}: {reason}"
