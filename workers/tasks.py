"""The tasks: thin wrappers that validate ids, load by id and call the library."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time
from collections import Counter
from concurrent.futures import CancelledError, Future, wait
from typing import Any

import redis
from celery import Task, shared_task

from rlm_jobs import keys
from rlm_jobs.dispatch import SubcallResult, SubcallSpec, complete_one
from rlm_jobs.models import JobResult, JobStatus
from workers import monitoring
from workers.app import LLM_TASK, RUN_JOB_TASK
from workers.dispatcher import PromptRecord
from workers.orchestrator import execute_job
from workers.replies import Reply, push_reply
from workers.runtime import WorkerRuntime, runtime_for

log = logging.getLogger(__name__)

# Ids are ours (uuid hex, child ids with dots); anything else is a malformed message.
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
# Call ids one llm task may carry: the upper bound of the llm_chunk_size setting.
_MAX_CALLS_PER_TASK = 100
# A prompt that waited longer than this for a slot of the llm pool re-reads its key and the
# cancel flag before calling the provider (one round trip); one that started at once goes
# by what the chunk read, so an idle worker pays nothing for it.
_FRESH_S = 0.05
# A chunk whose Redis failed mid-way is retried this many times, this long apart; prompts
# answered before the failure are skipped by the retry.
_MAX_RETRIES = 3
_RETRY_AFTER_S = 1.0


def _valid_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(f"malformed {what}: {str(value)[:80]!r}")
    return value


def _valid_call_ids(value: Any) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= _MAX_CALLS_PER_TASK:
        raise ValueError(f"malformed call ids: {str(value)[:80]!r}")
    call_ids = [_valid_id(v, "call id") for v in value]
    if len(set(call_ids)) != len(call_ids):  # the same prompt would be answered twice
        raise ValueError(f"repeated call ids: {str(value)[:80]!r}")
    return call_ids


def _text(raw: Any) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


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
            failed = JobResult(
                job_id=job_id, status=JobStatus.FAILED, reason=f"internal error: {exc!r}"
            )
            if runtime.store.finish(failed):
                monitoring.job_finished(JobStatus.FAILED)
        return f"failed: {exc!r}"
    log.info("job %s: %s", job_id, outcome)
    return outcome


# Task events stay on (``send_events``): the README promises Flower lists every task, and
# with prompts in chunks their cost is paid per chunk, not per prompt. Only the client's
# ``task-sent`` is left out (``CeleryDispatcher._send``).
@shared_task(name=LLM_TASK, bind=True)
def llm_complete(self: Task, job_id: str, call_ids: list[str], waiter_id: str) -> str:
    """A chunk of one job's sub-calls: prompts from Redis, run concurrently on the process's
    llm pool, each reply pushed to the waiting orchestrator as soon as it is ready.

    Returns when every prompt is answered, so the message is acknowledged only then; a
    worker that dies mid-chunk leaves it to be redelivered, and the redelivered task skips
    the prompts already answered (an answered prompt's key is deleted with its reply).
    """
    try:
        job_id = _valid_id(job_id, "job id")
        call_ids = _valid_call_ids(call_ids)
        waiter_id = _valid_id(waiter_id, "waiter id")
    except ValueError as exc:
        log.error("rejected llm message: %s", exc)
        return f"rejected: {exc}"
    runtime = runtime_for(self.app)
    chunk = LlmChunk(runtime, job_id, waiter_id, worker=self.request.hostname or runtime.worker_id)
    try:
        outcome = chunk.run(call_ids)
    except (redis.RedisError, CancelledError) as exc:
        # Redis failed, or the worker is shutting down: what was answered stays answered,
        # the rest is tried again (by this worker or another one).
        log.warning("llm chunk of job %s: %r; retrying the unanswered prompts", job_id, exc)
        raise self.retry(exc=exc, countdown=_RETRY_AFTER_S, max_retries=_MAX_RETRIES) from exc
    return outcome


class LlmChunk:
    """The prompts of one llm task, answered concurrently on the worker's llm pool."""

    def __init__(self, runtime: WorkerRuntime, job_id: str, waiter_id: str, *, worker: str) -> None:
        self._runtime = runtime
        self._redis = runtime.redis
        self.job_id = job_id
        self.waiter_id = waiter_id
        self.worker = worker
        # Children share their root's flag (``Store.cancel_reason``); read here in the same
        # pipeline as the prompts rather than by a second round trip through the store.
        self._cancel_key = keys.job_cancel(keys.root_job_id(job_id))

    def run(self, call_ids: list[str]) -> str:
        """Answer every prompt still waiting; what happened, for the worker's log."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._cancel_key)
        pipe.mget([keys.subcall_prompt(c) for c in call_ids])
        cancelled, raws = pipe.execute()
        read_at = time.monotonic()
        pool = self._runtime.llm_pool()
        futures: list[Future[str]] = [
            pool.submit(self._answer, call_id, raw, _text(cancelled), read_at)
            for call_id, raw in zip(call_ids, raws, strict=True)
            if raw is not None  # answered already (a redelivery), or given up by its job
        ]
        # Every prompt ends before the task does, failed or not: a retry must never overlap
        # prompts of this delivery still running.
        wait(futures)
        outcomes = Counter(f.result() for f in futures)
        outcomes["gone"] += len(call_ids) - len(futures)
        return ", ".join(f"{what} {n}" for what, n in sorted(outcomes.items()) if n)

    def _answer(self, call_id: str, raw: bytes, cancelled: str | None, read_at: float) -> str:
        prompt_key = keys.subcall_prompt(call_id)
        if time.monotonic() - read_at > _FRESH_S:
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(self._cancel_key)
            pipe.exists(prompt_key)
            raw_cancelled, exists = pipe.execute()
            if not exists:
                return "gone"  # its job stopped waiting while this prompt queued
            cancelled = _text(raw_cancelled)
        try:
            record = PromptRecord.model_validate_json(raw)
            if record.job_id != self.job_id:
                raise ValueError(f"the prompt is job {record.job_id}'s, not {self.job_id}'s")
        except ValueError as exc:  # pydantic's ValidationError included
            log.error(
                "llm chunk of job %s: malformed prompt record %s: %s", self.job_id, call_id, exc
            )
            result = SubcallResult(ok=False, text="Error: malformed sub-call record")
            outcome = "malformed"
        else:
            if cancelled:
                result = SubcallResult(ok=False, text=f"Error: not run: {cancelled}")
                outcome = "not run"
            else:
                spec = SubcallSpec(job_id=record.job_id, model=record.model, prompt=record.prompt)
                done = complete_one(self._runtime.router, spec)
                result = dataclasses.replace(done, worker=self.worker)
                outcome = "ok" if result.ok else "error"
        reply = Reply(call_id=call_id, result=result)
        push_reply(self._redis, self.waiter_id, reply, prompt_key=prompt_key)
        return outcome
