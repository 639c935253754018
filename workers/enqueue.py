"""How the submitter starts jobs on the cluster."""

from __future__ import annotations

from celery import Celery

from rlm_jobs.config import Settings
from rlm_jobs.submitter import Enqueue
from workers.app import create_app
from workers.names import ORCHESTRATE_QUEUE, RUN_JOB_TASK


def celery_enqueuer(settings: Settings, app: Celery | None = None) -> Enqueue:
    celery_app = app or create_app(settings)

    def enqueue(job_id: str) -> None:
        celery_app.send_task(RUN_JOB_TASK, args=[job_id], queue=ORCHESTRATE_QUEUE)

    return enqueue
