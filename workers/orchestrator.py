"""Running one job inside an orchestrator task: lease, loop, once-only result.

A job runs only while its worker holds the job's lease. One keeper thread per process
renews the leases of all its jobs and notices cancellations, in a couple of Redis round
trips however many jobs run. A duplicate delivery (the broker's visibility timeout, a
requeue after a crash) finds the lease taken or the result written and does nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rlm_jobs.engine import JobControl, LoopObserver
from rlm_jobs.errors import StorageError
from rlm_jobs.loop import run_loop
from rlm_jobs.models import JobResult, JobSpec, JobStatus
from rlm_jobs.store import Store
from workers import monitoring

if TYPE_CHECKING:  # the runtime owns the keeper, so it imports this module
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

# Cancellation should feel immediate; one MGET for every job four times a second is cheap.
CANCEL_POLL_S = 0.25
# How long releasing a lease waits for a renewal in flight (a Redis outage, at worst).
RELEASE_WAIT_S = 5.0
KEEPER_THREAD_NAME = "rlm-lease-keeper"

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
        self._emit("task-progress", monitoring.progress_event(job_id, counters))

    def job_finished(self, job_id: str, spec: JobSpec, result: JobResult) -> None:
        if spec.depth > 0:
            self._store.finish(result)
        with self._lock:
            self._last.pop(job_id, None)


class JobLease:
    """What the keeper knows about one running job: written by the keeper, read by the job."""

    def __init__(self, job_id: str, holder: str) -> None:
        self.job_id = job_id
        self.holder = holder
        self.lost = False
        self._reason: str | None = None
        self._control: JobControl | None = None
        self._lock = threading.Lock()

    def cancelled(self) -> str | None:
        return self._reason

    def attach(self, control: JobControl) -> None:
        """Let a stop reach the job's sandboxes, including a stop that came before this."""
        with self._lock:
            self._control = control
            stopped = self._reason is not None
        if stopped:
            control.repls.interrupt()

    def stop(self, reason: str, *, lost: bool = False) -> None:
        with self._lock:
            self._reason = reason
            self.lost = self.lost or lost
            control = self._control
        if control is not None:
            control.repls.interrupt()  # closes the REPLs, whose teardown runs in the background


class LeaseKeeper:
    """Renews the lease and watches the cancel flag of every job this process runs.

    One thread for all of them: every ``poll_s`` one MGET reads every cancel flag, every
    ``renew_s`` one script renews every lease. A job whose lease another worker took is told
    to stop (``lost``) and is no longer renewed; a cancelled one has its sandboxes interrupted.
    """

    def __init__(
        self, store: Store, *, ttl_s: float, renew_s: float, poll_s: float = CANCEL_POLL_S
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._renew_s = renew_s
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._leases: dict[str, JobLease] = {}
        # Held during a renewal round trip, so a released lease is never renewed afterwards.
        self._renewing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def jobs(self) -> int:
        with self._lock:
            return len(self._leases)

    def register(self, job_id: str, holder: str) -> JobLease:
        """Keep the lease ``holder`` just acquired; renewal is due ``renew_s`` from now at most."""
        lease = JobLease(job_id, holder)
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("the lease keeper is closed")
            # An older run of the same job here lapsed and was requeued back to us: it lost.
            earlier = self._leases.get(job_id)
            self._leases[job_id] = lease
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=KEEPER_THREAD_NAME, daemon=True
                )
                self._thread.start()
        if earlier is not None:
            self._stop_job(earlier, "lease lost: another worker took the job over", lost=True)
        return lease

    def unregister(self, lease: JobLease) -> None:
        """Stop keeping the lease and release it, unless another worker has it now."""
        with self._lock:
            if self._leases.get(lease.job_id) is lease:
                del self._leases[lease.job_id]
        # A renewal already in flight may include this lease: let it land, then release.
        if self._renewing.acquire(timeout=RELEASE_WAIT_S):
            self._renewing.release()
        if not lease.lost:
            self._store.release_lease(lease.job_id, lease.holder)

    def close(self) -> None:
        """Stop the thread; leases still held lapse after their TTL (the process is ending)."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=RELEASE_WAIT_S)

    def _run(self) -> None:
        next_poll = time.monotonic() + self._poll_s
        next_renew = time.monotonic() + self._renew_s
        while not self._stop.wait(max(0.0, min(next_poll, next_renew) - time.monotonic())):
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + self._poll_s
                self._guarded(self._poll_cancel_flags)
            if now >= next_renew:
                next_renew = now + self._renew_s
                self._guarded(self._renew)

    def _poll_cancel_flags(self) -> None:
        with self._lock:
            watched = [lease for lease in self._leases.values() if lease.cancelled() is None]
        if not watched:
            return
        reasons = self._store.cancel_reasons(lease.job_id for lease in watched)
        for lease in watched:
            reason = reasons.get(lease.job_id)
            if reason is not None:
                self._stop_job(lease, reason)

    def _renew(self) -> None:
        with self._renewing:
            with self._lock:
                kept = {j: lease for j, lease in self._leases.items() if not lease.lost}
            if not kept:
                return
            taken = self._store.renew_leases(
                {job_id: lease.holder for job_id, lease in kept.items()}, self._ttl_s
            )
        for job_id in taken:
            self._stop_job(kept[job_id], "lease lost: another worker took the job over", lost=True)

    def _stop_job(self, lease: JobLease, reason: str, *, lost: bool = False) -> None:
        try:
            lease.stop(reason, lost=lost)
        except Exception:  # one job's sandbox trouble must not hold up the others' renewals
            log.exception("could not stop the sandboxes of job %s", lease.job_id)

    @staticmethod
    def _guarded(step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:  # Redis hiccup: keep going; the TTL covers short outages
            log.exception("lease keeper: %s failed", step.__name__)


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
        # The keeper polls for cancels from now on; one cancelled while queued stops here.
        reason = lease.cancelled() or store.cancel_reason(job_id)
        if reason:
            return _finish_early(store, job_id, JobStatus.CANCELLED, reason)
        store.reset_trajectory(job_id)
        control = JobControl.for_root(
            spec,
            cancelled=lease.cancelled,
            observer=ServiceObserver(store, emit, settings.progress_interval_s),
        )
        lease.attach(control)
        result = run_loop(spec, job_id, runtime.engine(), control)
        if lease.lost:
            return f"abandoned: lost the lease of job {job_id}; another worker runs it"
        stored = store.finish(result)
        if stored:
            monitoring.job_finished(result.status)
        return (
            f"{result.status.value} (attempt {attempt})" if stored else "duplicate: result existed"
        )
    finally:
        keeper.unregister(lease)


def _finish_early(store: Store, job_id: str, status: JobStatus, reason: str) -> str:
    if store.finish(JobResult(job_id=job_id, status=status, reason=reason)):
        monitoring.job_finished(status)
    return f"{status.value}: {reason}"
