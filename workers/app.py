"""The Celery app: two queues, routing by task name, JSON only."""

from __future__ import annotations

import math
from urllib.parse import urlsplit

from rlm_jobs.config import Settings
from workers.base import RLMCelery
from workers.credit import PromptCreditStep
from workers.monitoring import WORKER_POOL_LIMIT, MonitoringStep
from workers.names import LLM_QUEUE, ORCHESTRATE_QUEUE
from workers.pools import SupportedPool

# Modules whose tasks and signal handlers every worker registers.
TASK_MODULES = ["workers.jobs", "workers.llm_chunks", "workers.lifecycle"]


def celery_config(
    settings: Settings, *, broker_pool_limit: int | None = WORKER_POOL_LIMIT
) -> dict[str, object]:
    """The app's configuration; ``broker_pool_limit`` None: no pool (workers/celeryconfig.py)."""
    if not settings.redis_url:
        raise RuntimeError("RLM_JOBS_REDIS_URL must be set for the Celery workers and submitter")
    return {
        "broker_url": settings.redis_url,
        # We never wait on Celery results: replies travel through Redis keys and lists.
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_routes": {
            "rlm.orchestrate.*": {"queue": ORCHESTRATE_QUEUE},
            "rlm.llm.*": {"queue": LLM_QUEUE},
        },
        "task_default_queue": ORCHESTRATE_QUEUE,
        # A task is acknowledged when it finishes, so a worker that dies mid-task loses
        # nothing; every task is idempotent (leases, once-only results) to make that safe.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Orchestrator tasks run for minutes: a worker must not hoard messages it cannot start.
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": _transport_options(settings),
        **_outage_options(settings),
        "broker_connection_retry_on_startup": True,
        # A worker waits for Redis however long it is away, rather than exit after Celery's
        # 100 tries (its jobs and their sandboxes may still be alive when it returns).
        "broker_connection_max_retries": None,
        "broker_pool_limit": broker_pool_limit,
        # Flower shows tasks from events: send them without needing `-E`. ``task-sent`` lets
        # it show jobs still queued; llm tasks are sent without one (workers/dispatcher.py).
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        # Jobs wait on the network and share per-process state: threads, never prefork
        # (workers/pools.py refuses it at start). Celery's default would be prefork.
        "worker_pool": "threads",
    }


def _outage_options(settings: Settings) -> dict[str, object]:
    """What lets workers and submitters ride out a Redis restart (``redis_retry_s``)."""
    options: dict[str, object] = {
        # Task sends (submits, sub-call chunks, requeues) retry through the outage; Celery's
        # default gives up after 0.6 s.
        "task_publish_retry_policy": {
            "max_retries": math.ceil(settings.redis_retry_s) + 2 if settings.redis_retry_s else 0,
            "interval_start": 0,
            "interval_step": 0.25,
            "interval_max": 1.0,
        },
    }
    if urlsplit(settings.redis_url or "").scheme == "redis":
        # kombu's transport with the fix that keeps a worker alive when Redis goes away
        # under it (workers/transport.py); other schemes keep kombu's own.
        options["broker_transport"] = "workers.transport:Transport"
    return options


def _transport_options(settings: Settings) -> dict[str, object]:
    options: dict[str, object] = {
        "visibility_timeout": settings.visibility_timeout_s,
        # workers/transport.py: a delivered message is kept through an outage this long.
        "delivery_retry_s": settings.redis_retry_s,
    }
    if settings.broker_restore_interval_s is not None:
        options["unacked_restore_interval"] = settings.broker_restore_interval_s
        options["unacked_restore_throttle"] = 1
    return options


def create_app(settings: Settings | None = None) -> RLMCelery:
    """An app configured from ``settings`` (the CLI, tests and the local stack use this);
    without them, from the environment the first time Celery needs its configuration."""
    celery_app = RLMCelery("rlm_jobs", include=TASK_MODULES, settings=settings)
    # llm workers reserve chunk tasks by the prompts they carry (workers/credit.py).
    celery_app.steps["consumer"].add(PromptCreditStep)
    # The worker's own broker pool, its Prometheus metrics (workers/monitoring.py).
    celery_app.steps["worker"].add(MonitoringStep)
    celery_app.steps["worker"].add(SupportedPool)
    if settings is not None:
        celery_app.conf.update(celery_config(settings))
    else:
        celery_app.config_from_object("workers.celeryconfig")
    return celery_app


# The app `celery -A workers` loads; configured lazily from the environment.
app = create_app()
