"""Cleaning up after workers that died: requeue their jobs (one live worker wins each),
remove their sandbox containers and their sandboxes' Redis ACL users."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rlm_jobs import keys, timing
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


class Reaper:
    """One thread per orchestrator process, sweeping every ``reaper_interval_s``."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self._runtime = runtime
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rlm-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sweep(self) -> list[str]:
        store = self._runtime.store
        requeued = []
        for job_id in store.running_without_lease():
            if self._stop.is_set():  # stopping: leave the rest to live workers' reapers
                break
            if keys.root_job_id(job_id) != job_id:
                continue  # a child RLM: its root's lease covers it
            record = store.get(job_id)
            if record.result is not None:
                continue
            if store.requeue_claim(job_id, record.attempts):
                self._runtime.requeue(job_id)
                requeued.append(job_id)
                log.warning(
                    "job %s lost its worker; requeued to resume from its journal (attempt %d)",
                    job_id,
                    record.attempts,
                )
        return requeued

    def sweep_sandboxes(self) -> None:
        runtime = self._runtime
        runtime.sandbox_services().janitor.sweep_stale_users()
        if runtime.settings.sandbox_backend == "docker":
            from rlm_jobs.sandboxes.backends.docker import reap_orphans

            removed = reap_orphans(runtime.settings)
            if removed:
                log.warning("removed %d sandbox containers left by dead workers", len(removed))

    def _run(self) -> None:
        settings = self._runtime.settings
        interval = settings.reaper_interval_s
        next_sandbox_sweep = 0.0
        while True:
            _guarded(self.sweep)
            if self._stop.is_set():  # a sandbox sweep cut off by the exit would be half done
                return
            if time.monotonic() >= next_sandbox_sweep:
                next_sandbox_sweep = time.monotonic() + settings.sandbox_sweep_interval_s
                _guarded(self.sweep_sandboxes)
            if self._stop.wait(min(interval, settings.sandbox_sweep_interval_s)):
                return

    def stop(self) -> None:
        """Stop after the sweep under way, if it ends soon: a requeue or a sandbox sweep cut
        off by the process's exit would leave its half done (a claimed requeue never sent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timing.REAPER_STOP_WAIT_S)


def _guarded(step: Callable[[], object]) -> None:
    try:
        step()
    except Exception:  # a Redis or Docker hiccup must not end the reaper
        log.exception("reaper: %s failed", getattr(step, "__name__", step))
