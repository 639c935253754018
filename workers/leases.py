"""Job leases: a job runs only while its worker holds the job's lease.

One ``LeaseKeeper`` thread per orchestrator process renews the leases of all its jobs and
notices cancellations, in a couple of Redis round trips however many jobs run. A lease
that lapses means its worker died: the reaper of a live orchestrator requeues the job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rlm_jobs import timing
from rlm_jobs.engine import JobControl
from rlm_jobs.store import Store

log = logging.getLogger(__name__)

KEEPER_THREAD_NAME = "rlm-lease-keeper"


class JobLease:
    """What the keeper knows about one running job: written by the keeper, read by the job."""

    def __init__(self, job_id: str, holder: str) -> None:
        self.job_id = job_id
        self.holder = holder
        # Another worker took the job over: this run must stop and write nothing.
        self.lost = False
        self._reason: str | None = None
        # Set when this run must stop unfinished and leave the job to another run (its
        # worker is shutting down, or the lease was lost): the journal carries it on.
        self._handover: str | None = None
        self._control: JobControl | None = None
        self._lock = threading.Lock()

    def cancelled(self) -> str | None:
        return self._reason

    def handover(self) -> str | None:
        return self._handover

    def attach(self, control: JobControl) -> None:
        """Let a stop reach the job's sandboxes, including a stop that came before this."""
        with self._lock:
            self._control = control
            stopped = self._reason is not None or self._handover is not None
        if stopped:
            control.repls.interrupt()

    def stop(self, reason: str, *, lost: bool = False) -> None:
        """A cancel (the job ends CANCELLED), or with ``lost`` a run that must give way."""
        with self._lock:
            if lost:
                self.lost = True
                self._handover = reason
            else:
                self._reason = reason
            control = self._control
        if control is not None:
            control.repls.interrupt()  # closes the REPLs, whose teardown runs in the background

    def hand_over(self, reason: str) -> None:
        """Stop this run now, unfinished, so another worker resumes the job from its journal."""
        with self._lock:
            if self._handover is None:
                self._handover = reason
            control = self._control
        if control is not None:
            control.repls.interrupt()


class LeaseKeeper:
    """Renews the lease and watches the cancel flag of every job this process runs.

    One thread for all of them: every ``poll_s`` one MGET reads every cancel flag, every
    ``renew_s`` one script renews every lease. A job whose lease another worker took is told
    to stop (``lost``) and is no longer renewed; a cancelled one has its sandboxes interrupted.
    """

    def __init__(
        self, store: Store, *, ttl_s: float, renew_s: float, poll_s: float = timing.STOP_CHECK_S
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
        if self._renewing.acquire(timeout=timing.LEASE_RELEASE_WAIT_S):
            self._renewing.release()
        if not lease.lost:
            self._store.release_lease(lease.job_id, lease.holder)

    def hand_over_all(self, reason: str) -> int:
        """Stop every job of this process unfinished (a warm shutdown); how many there were.

        Each job's run then hands it back (``Store.hand_back``) for another worker to
        resume by replay, instead of leaving it for its lease to expire.
        """
        with self._lock:
            leases = list(self._leases.values())
        for lease in leases:
            try:
                lease.hand_over(reason)
            except Exception:  # one job's sandbox trouble must not keep the others running
                log.exception("could not stop the sandboxes of job %s", lease.job_id)
        return len(leases)

    def close(self) -> None:
        """Stop the thread; leases still held lapse after their TTL (the process is ending)."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timing.LEASE_RELEASE_WAIT_S)

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
