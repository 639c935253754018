"""What a worker does to be watched: its own small broker pool, Prometheus metrics, and
job progress in a form Flower shows.

``MonitoringStep`` is a worker bootstep (``create_app`` adds it). Built when the worker
starts, before anything has used the broker, it sets the worker's small producer pool
(``WORKER_POOL_LIMIT``): the ``celery -A workers`` configuration has none, for Flower's
sake (workers/celeryconfig.py). Started with the worker, it serves ``/metrics`` when
``metrics_port`` is set, and stops the server on the way out.

Metrics are per process (``process_metrics``): the threads pool runs every task of a
worker in its process, and a Prometheus target is a process. Under the prefork pool,
children would count jobs Prometheus never sees; rlm-jobs runs its workers on threads.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

from celery import bootsteps

from rlm_jobs.config import Settings, redis_client
from rlm_jobs.errors import ConfigError
from rlm_jobs.metrics import Metrics, MetricsServer, QueueDepth
from rlm_jobs.models import JobStatus
from workers.app import LLM_QUEUE, ORCHESTRATE_QUEUE, WORKER_POOL_LIMIT

log = logging.getLogger(__name__)

_lock = threading.Lock()
_metrics: Metrics | None = None
_server: MetricsServer | None = None
_queues: QueueDepth | None = None
_server_users = 0  # workers of this process sharing the server (the local stack runs two)


def process_metrics() -> Metrics:
    """The metrics of this process, made on first use."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics()
        return _metrics


def job_finished(status: JobStatus) -> None:
    """Count a job whose one result this process stored."""
    process_metrics().job_finished(status)


def progress_event(job_id: str, counters: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a job's ``task-progress`` event.

    Flower's task state takes the event's ``state`` (PROGRESS), but its API and task page
    show only Celery's own task fields, so the counters also travel as the task's
    ``result``: JSON, short of the 1,024 characters Flower keeps.
    """
    summary = json.dumps({"job_id": job_id, **counters}, separators=(", ", ": "))
    return {"state": "PROGRESS", "job_id": job_id, **counters, "result": summary}


def _serve(settings: Settings) -> MetricsServer:
    global _metrics, _server, _queues, _server_users
    assert settings.metrics_port is not None
    with _lock:
        if _metrics is None:
            _metrics = Metrics()
        if _server is None:
            _server = _metrics.serve(
                settings.metrics_port,
                host=settings.metrics_host,
                ports=settings.metrics_port_range,
            )
            _queues = _metrics.watch_queues(redis_client(settings), (ORCHESTRATE_QUEUE, LLM_QUEUE))
        _server_users += 1
        return _server


def _unserve() -> None:
    global _server, _queues, _server_users
    with _lock:
        _server_users -= 1
        if _server_users > 0 or _server is None:
            return
        server, queues, _server, _queues = _server, _queues, None, None
        if _metrics is not None and queues is not None:
            _metrics.registry.unregister(queues)
    server.close()
    if queues is not None:
        queues.close()


class MonitoringStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: the worker's broker pool at init, its metrics server while it runs."""

    label = "rlm-monitoring"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        # Read when the pool is first made (``app.pool``, then ``amqp.producer_pool``):
        # nothing has made it yet while the worker's steps are being built.
        worker.app.conf.broker_pool_limit = WORKER_POOL_LIMIT
        self._serving = False

    def start(self, worker: Any) -> None:
        from workers.runtime import settings_of  # the worker's only: keeps imports light

        app = worker.app
        limit = app.pool.limit
        if limit != WORKER_POOL_LIMIT:
            raise ConfigError(
                f"the worker's broker pool holds {limit} connections, not {WORKER_POOL_LIMIT}: "
                "something opened it before the worker started"
            )
        log.info("broker pool: %d connections per process", limit)
        settings = settings_of(app)
        if settings.metrics_port is None:
            return
        server = _serve(settings)
        self._serving = True
        log.info("metrics: serving %s", server.url)

    def stop(self, worker: Any) -> None:
        if self._serving:
            self._serving = False
            _unserve()
