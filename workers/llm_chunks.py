"""llm tasks: a chunk of one job's sub-calls, answered concurrently on the worker's pool."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from concurrent.futures import CancelledError, Future, wait

import redis
from celery import shared_task
from kombu.exceptions import OperationalError as BrokerError

from rlm_jobs import keys
from rlm_jobs.calls import RecordHandle, StoredCall, Taken
from rlm_jobs.dispatch import complete_one
from rlm_jobs.errors import CallAbandoned, StorageError
from rlm_jobs.status import JobStatus
from sandbox.records import SubcallResult, not_run
from workers.base import RLMTask
from workers.dispatcher import send_llm_task
from workers.llm_slots import LlmSlots
from workers.messages import valid_call_ids, valid_id
from workers.names import LLM_TASK
from workers.replies import Reply
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

# A prompt that waited longer than this for a slot of the llm pool re-reads its key and the
# cancel flag before calling the provider (one round trip); one that started at once goes
# by what the chunk read, so an idle worker pays nothing for it.
_FRESH_S = 0.05
# A chunk whose Redis failed mid-way is retried this many times, this long apart; prompts
# answered before the failure are skipped by the retry.
_MAX_RETRIES = 3
_RETRY_AFTER_S = 1.0


# Task events stay on (``send_events``): the README promises Flower lists every task, and
# with prompts in chunks their cost is paid per chunk, not per prompt. Only the client's
# ``task-sent`` is left out (``workers.dispatcher.send_llm_task``).
@shared_task(name=LLM_TASK, bind=True, base=RLMTask)
def llm_complete(self: RLMTask, job_id: str, call_ids: list[str], forwarded: bool = False) -> str:
    """A chunk of one job's sub-calls: prompts from Redis, run concurrently on the process's
    llm pool, each reply pushed to the orchestrator its record names as soon as it is ready.

    Each call is claimed before it runs and its claim kept alive while it does: a worker
    that dies mid-chunk stops renewing, and the orchestrator sends the unanswered calls
    again within seconds. Returns when every call is answered, so the message is
    acknowledged only then; a redelivery finds the calls answered (their records are gone)
    or claimed, and skips them. The calls the process has no free slot for go back to the
    queue as a task of their own (``forwarded``, which runs wherever it lands).
    """
    try:
        job_id = valid_id(job_id, "job id")
        call_ids = valid_call_ids(call_ids)
    except ValueError as exc:
        log.error("rejected llm message: %s", exc)
        return f"rejected: {exc}"
    runtime = self.runtime
    chunk = LlmChunk(runtime, job_id, worker=self.request.hostname or runtime.worker_id)
    try:
        outcome = chunk.run(call_ids, forwarded=forwarded is True)
    except (redis.RedisError, BrokerError, StorageError, CancelledError) as exc:
        # Redis failed (as a broker, kombu says so with its own error: forwarding publishes),
        # or the worker is shutting down: what was answered stays answered, the rest is
        # tried again (by this worker or another one).
        log.warning("llm chunk of job %s: %r; retrying the unanswered prompts", job_id, exc)
        raise self.retry(exc=exc, countdown=_RETRY_AFTER_S, max_retries=_MAX_RETRIES) from exc
    return outcome


class LlmChunk:
    """The calls of one llm task, answered concurrently on the worker's llm pool."""

    def __init__(self, runtime: WorkerRuntime, job_id: str, *, worker: str) -> None:
        self._runtime = runtime
        self._calls = runtime.calls
        self.job_id = job_id
        self.worker = worker
        # Children share their root's cancel flag (``Store.cancel_reason``).
        self._root_id = keys.root_job_id(job_id)
        self._token = f"{worker}:{uuid.uuid4().hex[:12]}"

    def run(self, call_ids: list[str], *, forwarded: bool = False) -> str:
        """Answer every call still waiting; what happened, for the worker's log."""
        slots = self._runtime.llm_slots
        granted = slots.hold(len(call_ids)) if forwarded else slots.reserve(len(call_ids))
        here, away = call_ids[:granted], call_ids[granted:]
        outcomes: Counter[str] = Counter()
        if away:
            try:
                self._forward(away)
            except BaseException:
                slots.release(granted)
                raise
            outcomes["forwarded"] = len(away)
        if here:
            outcomes += self._run_here(here, slots)
        return ", ".join(f"{what} {n}" for what, n in sorted(outcomes.items()) if n)

    def _forward(self, call_ids: list[str]) -> None:
        # Not claimed here, so any worker may take them; sent before this chunk's own calls
        # start, so they wait in the queue no longer than they would have waited here.
        app = self._runtime.app
        with app.producer_or_acquire() as producer:
            send_llm_task(app, producer, self.job_id, call_ids, forwarded=True)

    def _run_here(self, call_ids: list[str], slots: LlmSlots) -> Counter[str]:
        """Run ``call_ids`` on the slots reserved for them: a call that starts gives its slot
        back when it ends; the others give theirs back here."""
        keeper = self._runtime.claim_keeper()
        unstarted = len(call_ids)
        mine: dict[str, Taken | str] = {}
        futures: list[Future[str]] = []
        try:
            cancelled, taken = self._calls.take(self._root_id, call_ids, self._token, keeper.ttl_s)
            mine = {c: t for c, t in taken.items() if isinstance(t, Taken) or t == "malformed"}
            keeper.hold(dict.fromkeys(mine, self._token))
            read_at = time.monotonic()
            pool = self._runtime.llm_pool()
            for call_id, call in mine.items():
                futures.append(pool.submit(self._answer_in_slot, call_id, call, cancelled, read_at))
                unstarted -= 1
        finally:
            slots.release(unstarted)
            # Every call ends before the task does, failed or not: a retry must never
            # overlap calls of this delivery still running.
            wait(futures)
            for call_id in mine:
                keeper.release(call_id)
        outcomes = Counter(f.result() for f in futures)
        for state in taken.values():
            if state in ("gone", "busy"):
                outcomes[state] += 1
        return outcomes

    def _answer_in_slot(
        self, call_id: str, call: Taken | str, cancelled: str | None, read_at: float
    ) -> str:
        try:
            return self._answer(call_id, call, cancelled, read_at)
        finally:
            self._runtime.llm_slots.release()

    def _answer(
        self, call_id: str, call: Taken | str, cancelled: str | None, read_at: float
    ) -> str:
        if time.monotonic() - read_at > _FRESH_S:
            # It queued for a slot of the pool: its job may have stopped or given it up.
            pipe = self._runtime.redis.pipeline(transaction=False)
            pipe.get(keys.job_cancel(self._root_id))
            pipe.exists(keys.subcall(call_id))
            raw_cancelled, exists = pipe.execute()
            if not exists:
                return "gone"
            cancelled = None if raw_cancelled is None else raw_cancelled.decode()
        if not isinstance(call, Taken) or call.job_id != self.job_id:
            log.error("llm chunk of job %s: malformed sub-call record %s", self.job_id, call_id)
            result = SubcallResult(ok=False, text="Error: malformed sub-call record")
            outcome = "malformed"
        elif cancelled:  # the job ends CANCELLED, whoever reads this result first
            result = not_run(cancelled).replace(refusal=JobStatus.CANCELLED.value)
            outcome = "not run"
        else:
            handle = RecordHandle(self._calls, call_id, self._token, call.response_id)
            try:
                result = complete_one(
                    self._runtime.router,
                    call.model,
                    call.messages,
                    context=call.context,
                    worker=self.worker,
                    handle=handle,
                )
            except CallAbandoned:  # answered, given up or taken over meanwhile
                return "gone"
            outcome = "ok" if result.ok else "error"
        reply = Reply(call_id=call_id, result=result).to_json()
        if not self._calls.complete(self.job_id, call_id, StoredCall(result), reply):
            return "gone"  # answered meanwhile by another delivery, or given up by its job
        return outcome
