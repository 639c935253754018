"""Worker lifecycle hooks: warm up at start, run the reaper on orchestrators, hand running
jobs back at a shutdown, clean up."""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from rlm_jobs.errors import RLMJobsError
from workers.base import RLMCelery
from workers.names import ORCHESTRATE_QUEUE
from workers.reaper import Reaper

log = logging.getLogger(__name__)


def _consumes_orchestrate(sender: Any) -> bool:
    queues = sender.app.amqp.queues.consume_from or sender.app.amqp.queues
    return ORCHESTRATE_QUEUE in queues


def _warm_up(app: RLMCelery) -> None:
    """Build clients now: importing an SDK takes seconds that the first jobs should not pay."""
    runtime = app.runtime
    settings = runtime.settings
    try:
        runtime.router.warm_up(settings.resolved_model(), settings.resolved_sub_model())
    except RLMJobsError as exc:  # jobs naming another model still work; say why this failed
        log.warning("could not prepare the default model's client: %s", exc)


def _rlm_app(sender: Any) -> RLMCelery | None:
    app = getattr(sender, "app", None)
    return app if isinstance(app, RLMCelery) else None


@worker_ready.connect
def _on_ready(sender: Any, **_: Any) -> None:
    app = _rlm_app(sender)
    if app is None:
        return
    _warm_up(app)
    if not _consumes_orchestrate(sender):
        return
    app.reaper = Reaper(app.runtime)
    app.reaper.start()


@worker_shutting_down.connect
def _on_shutting_down(sender: Any, how: str = "Warm", **_: Any) -> None:
    """SIGTERM (a scale-down, a deploy): hand the running jobs back at once, journal intact,
    rather than leave them for their leases to expire. Sent in the main process's signal
    handler, before Celery waits for the running tasks, which now end quickly."""
    # The app whose runtime runs the tasks: `celery -A` makes ours the current one.
    app = current_app._get_current_object()
    runtime = app.built_runtime() if isinstance(app, RLMCelery) else None
    if runtime is not None:
        handed = runtime.hand_over_jobs(f"its worker is shutting down ({how.lower()} shutdown)")
        if handed:
            log.warning("handing %d running jobs back to the queue", handed)


@worker_shutdown.connect
def _on_shutdown(sender: Any, **_: Any) -> None:
    app = _rlm_app(sender)
    if app is None:
        return
    if app.reaper is not None:
        app.reaper.stop()
    app.close_runtime()
