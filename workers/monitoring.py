"""What a worker does to be watched: its own small broker pool, Prometheus metrics, and
job progress in a form Flower shows.

``MonitoringStep`` is a worker bootstep (``create_app`` adds it). Built when the worker
starts, before anything has used the broker, it sets the worker's small producer pool
(``WORKER_POOL_LIMIT``): the ``celery -A workers`` configuration has none, for Flower's
sake (workers/celeryconfig.py). Started with the worker, it serves the process's metrics
(``WorkerRuntime.metrics``, also the LLM router's observer) on ``/metrics`` when
``metrics_port`` is set, and stops the server on the way out.

Metrics are per process: the threads pool runs every task of a worker in its process, and
a Prometheus target is a process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from celery import bootsteps

from rlm_jobs.config import redis_client
from rlm_jobs.errors import ConfigError
from rlm_jobs.metrics import MetricsServer, QueueDepth
from workers.names import LLM_QUEUE, ORCHESTRATE_QUEUE

log = logging.getLogger(__name__)

# Producer connections per worker and submitter process (task sends and progress events): a
# send takes a fraction of a millisecond, so two serve hundreds of job threads (they wait
# for one), and each is a Redis client (docs/benchmarks.md counts a process's connections).
WORKER_POOL_LIMIT = 2


def progress_event(job_id: str, counters: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a job's ``task-progress`` event.

    Flower's task state takes the event's ``state`` (PROGRESS), but its API and task page
    show only Celery's own task fields, so the counters also travel as the task's
    ``result``: JSON, short of the 1,024 characters Flower keeps.
    """
    summary = json.dumps({"job_id": job_id, **counters}, separators=(", ", ": "))
    return {"state": "PROGRESS", "job_id": job_id, **counters, "result": summary}


class MonitoringStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: the worker's broker pool at init, its metrics server while it runs."""

    label = "rlm-monitoring"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        # Read when the pool is first made (``app.pool``, then ``amqp.producer_pool``):
        # nothing has made it yet while the worker's steps are being built.
        worker.app.conf.broker_pool_limit = WORKER_POOL_LIMIT
        self._server: MetricsServer | None = None
        self._queues: QueueDepth | None = None

    def start(self, worker: Any) -> None:
        app = worker.app  # our RLMCelery (workers/base.py); Celery hands it over untyped
        limit = app.pool.limit
        if limit != WORKER_POOL_LIMIT:
            raise ConfigError(
                f"the worker's broker pool holds {limit} connections, not {WORKER_POOL_LIMIT}: "
                "something opened it before the worker started"
            )
        log.info("broker pool: %d connections per process", limit)
        settings = app.settings
        if settings.metrics_port is None:
            return
        metrics = app.runtime.metrics
        self._server = metrics.serve(
            settings.metrics_port, host=settings.metrics_host, ports=settings.metrics_port_range
        )
        self._queues = metrics.watch_queues(redis_client(settings), (ORCHESTRATE_QUEUE, LLM_QUEUE))
        log.info("metrics: serving %s", self._server.url)

    def stop(self, worker: Any) -> None:
        server, queues, self._server, self._queues = self._server, self._queues, None, None
        if queues is not None:
            worker.app.runtime.metrics.registry.unregister(queues)
            queues.close()
        if server is not None:
            server.close()
