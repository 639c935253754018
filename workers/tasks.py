"""The tasks: thin wrappers that validate ids, load by id and call the library."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
from typing import Any

from celery import Task, shared_task

from rlm_jobs import keys
from rlm_jobs.dispatch import SubcallResult, SubcallSpec, complete_one
from rlm_jobs.models import JobResult, JobStatus
from workers.app import LLM_TASK, RUN_JOB_TASK
from workers.orchestrator import execute_job
from workers.replies import Reply, push_reply
from workers.runtime import runtime_for

log = logging.getLogger(__name__)

# Ids are ours (uuid hex, child ids with dots); anything else is a malformed message.
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


def _valid_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(f"malformed {what}: {str(value)[:80]!r}")
    return value


def _emitter(task: Task) -> Any:
    """Send task events from any thread: the request context is thread-local."""
    task_id = task.request.id
    hostname = task.request.hostname

    def emit(event_type: str, fields: dict[str, Any]) -> None:
        try:
            with task.app.events.default_dispatcher(hostname=hostname) as dispatcher:
                dispatcher.send(event_type, uuid=task_id, **fields)
        except Exception:  # progress is best effort; the job must not fail for it
            log.exception("could not send %s for task %s", event_type, task_id)

    return emit


@shared_task(name=RUN_JOB_TASK, bind=True)
def run_job(self: Task, job_id: str) -> str:
    """Run the RLM loop of one job; its result goes to the job record, not to Celery."""
    try:
        job_id = _valid_id(job_id, "job id")
    except ValueError as exc:
        log.error("rejected orchestrate message: %s", exc)
        return f"rejected: {exc}"
    runtime = runtime_for(self.app)
    try:
        outcome = execute_job(job_id, runtime, _emitter(self))
    except Exception as exc:  # a bug or an outage: the job must end, not stay QUEUED
        log.exception("job %s: orchestrator error", job_id)
        with contextlib.suppress(Exception):
            runtime.store.finish(
                JobResult(job_id=job_id, status=JobStatus.FAILED, reason=f"internal error: {exc!r}")
            )
        return f"failed: {exc!r}"
    log.info("job %s: %s", job_id, outcome)
    return outcome


@shared_task(name=LLM_TASK, bind=True)
def llm_complete(self: Task, call_id: str, waiter_id: str) -> str:
    """One sub-call: prompt from Redis, reply pushed to the waiting orchestrator."""
    try:
        call_id = _valid_id(call_id, "call id")
        waiter_id = _valid_id(waiter_id, "waiter id")
    except ValueError as exc:
        log.error("rejected llm message: %s", exc)
        return f"rejected: {exc}"
    runtime = runtime_for(self.app)
    raw = runtime.redis.get(keys.subcall_prompt(call_id))
    if raw is None:
        return "dropped: the job no longer waits for this call"
    record = json.loads(raw)
    spec = SubcallSpec(job_id=record["job_id"], model=record["model"], prompt=record["prompt"])
    cancelled = runtime.store.cancel_reason(spec.job_id)
    if cancelled:
        result = SubcallResult(ok=False, text=f"Error: not run: {cancelled}")
    else:
        result = dataclasses.replace(
            complete_one(runtime.router, spec), worker=self.request.hostname or runtime.worker_id
        )
    push_reply(runtime.redis, waiter_id, Reply(call_id=call_id, result=result))
    runtime.redis.delete(keys.subcall_prompt(call_id))
    return "ok" if result.ok else "error"
