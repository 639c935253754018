"""Worker lifecycle: resume jobs of dead workers, clean up on the way out."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from rlm_jobs import keys
from rlm_jobs.errors import RLMJobsError
from workers.app import ORCHESTRATE_QUEUE, RUN_JOB_TASK
from workers.runtime import runtime_for

log = logging.getLogger(__name__)


class Reaper:
    """Cleans up after workers that died: requeues their jobs (one live worker wins each),
    removes their sandbox containers and their sandboxes' Redis ACL users."""

    def __init__(self, app: Celery) -> None:
        self._app = app
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rlm-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sweep(self) -> list[str]:
        runtime = runtime_for(self._app)
        store = runtime.store
        requeued = []
        for job_id in store.running_without_lease():
            if keys.root_job_id(job_id) != job_id:
                continue  # a child RLM: its root's lease covers it
            record = store.get(job_id)
            if record.result is not None:
                continue
            if store.requeue_claim(job_id, record.attempts):
                self._app.send_task(RUN_JOB_TASK, args=[job_id], queue=ORCHESTRATE_QUEUE)
                requeued.append(job_id)
                log.warning(
                    "job %s lost its worker; requeued (attempt %d)", job_id, record.attempts
                )
        return requeued

    def sweep_sandboxes(self) -> None:
        runtime = runtime_for(self._app)
        runtime.sandbox_services().janitor.sweep_stale_users()
        if runtime.settings.sandbox_backend == "docker":
            from rlm_jobs.sandboxes.backends.docker import reap_orphans

            removed = reap_orphans(runtime.settings)
            if removed:
                log.warning("removed %d sandbox containers left by dead workers", len(removed))

    def _run(self) -> None:
        settings = runtime_for(self._app).settings
        interval = settings.reaper_interval_s
        next_sandbox_sweep = 0.0
        while True:
            _guarded(self.sweep)
            if time.monotonic() >= next_sandbox_sweep:
                next_sandbox_sweep = time.monotonic() + settings.sandbox_sweep_interval_s
                _guarded(self.sweep_sandboxes)
            if self._stop.wait(min(interval, settings.sandbox_sweep_interval_s)):
                return

    def stop(self) -> None:
        self._stop.set()


def _guarded(step: Callable[[], object]) -> None:
    try:
        step()
    except Exception:  # a Redis or Docker hiccup must not end the reaper
        log.exception("reaper: %s failed", getattr(step, "__name__", step))


def _consumes_orchestrate(sender: Any) -> bool:
    queues = sender.app.amqp.queues.consume_from or sender.app.amqp.queues
    return ORCHESTRATE_QUEUE in queues


def _warm_up(app: Celery) -> None:
    """Build clients now: importing an SDK takes seconds that the first jobs should not pay."""
    runtime = runtime_for(app)
    settings = runtime.settings
    try:
        runtime.router.warm_up(settings.resolved_model(), settings.resolved_sub_model())
    except RLMJobsError as exc:  # jobs naming another model still work; say why this failed
        log.warning("could not prepare the default model's client: %s", exc)


@worker_ready.connect
def _on_ready(sender: Any, **_: Any) -> None:
    app = sender.app
    _warm_up(app)
    if not _consumes_orchestrate(sender):
        return
    reaper = Reaper(app)
    reaper.start()
    app.rlm_reaper = reaper


@worker_shutdown.connect
def _on_shutdown(sender: Any, **_: Any) -> None:
    app = getattr(sender, "app", None)
    reaper = getattr(app, "rlm_reaper", None)
    if reaper is not None:
        reaper.stop()
    runtime = getattr(app, "rlm_runtime", None)
    if runtime is not None:
        runtime.close()
