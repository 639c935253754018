"""The Celery dispatcher: the prompts of a batch go to the ``rlm.llm`` queue in chunks.

Prompts are stored in Redis and a task carries only ids (the job, its chunk's call ids and
where to reply), so no message grows with the prompts. A chunk's prompts run concurrently
on the llm worker that takes it, and each reply is pushed as soon as it is ready; replies
come back through ``ReplyCollector`` in any order, are streamed to ``on_result`` and put
back in prompt order here.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait

import redis
from celery import Celery
from kombu.messaging import Producer
from pydantic import BaseModel, ConfigDict

from rlm_jobs import keys
from rlm_jobs.dispatch import ResultCallback, StopCheck, SubcallResult, SubcallSpec, not_run
from workers.app import LLM_QUEUE, LLM_TASK
from workers.replies import ReplyCollector

# How often a waiting batch checks whether its job must stop (cancel, budget, timeout).
_STOP_CHECK_S = 0.25
# A batch goes out as at least this many tasks (one per prompt below it) before prompts
# share a task. Celery costs ~7 ms of CPU per task (message, ack, events), so sharing pays,
# but a chunk runs inside one worker process: a batch in a few big chunks would keep most
# of the llm pool idle. Workers reserve chunks by their prompts (workers/credit.py), so
# chunks this small spread evenly; past 32 * llm_chunk_size prompts chunks are full.
SPREAD_TASKS = 32


class PromptRecord(BaseModel):
    """What ``keys.subcall_prompt(call_id)`` holds: everything a worker needs for one call."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    model: str
    prompt: str


def chunk_sizes(n: int, max_chunk: int, spread: int = SPREAD_TASKS) -> list[int]:
    """How ``n`` prompts are split into tasks: as even as possible, none above ``max_chunk``.

    One prompt is one task (a lone ``llm_query`` must not wait for anything).
    """
    if n <= 0:
        return []
    tasks = max(math.ceil(n / max_chunk), min(n, spread))
    base, extra = divmod(n, tasks)
    return [base + 1] * extra + [base] * (tasks - extra)


class CeleryDispatcher:
    def __init__(
        self,
        app: Celery,
        client: redis.Redis,
        collector: ReplyCollector,
        *,
        chunk_size: int,
        spread_tasks: int = SPREAD_TASKS,
    ) -> None:
        self._app = app
        self._client = client
        self._collector = collector
        self._chunk_size = chunk_size
        self._spread_tasks = spread_tasks

    def run_batch(
        self, specs: Sequence[SubcallSpec], *, on_result: ResultCallback, stop: StopCheck
    ) -> list[SubcallResult]:
        reason = stop()
        if reason:
            return [not_run(reason) for _ in specs]
        call_ids = [uuid.uuid4().hex for _ in specs]
        pipe = self._client.pipeline(transaction=False)
        for call_id, spec in zip(call_ids, specs, strict=True):
            record = PromptRecord(job_id=spec.job_id, model=spec.model, prompt=spec.prompt)
            pipe.set(
                keys.subcall_prompt(call_id), record.model_dump_json(), ex=keys.SANDBOX_KEY_TTL_S
            )
        pipe.execute()
        futures: dict[Future[SubcallResult], int] = {
            self._collector.expect(call_id): i for i, call_id in enumerate(call_ids)
        }
        with self._app.producer_or_acquire() as producer:
            for job_id, chunk in self._chunks(specs, call_ids):
                self._send(producer, job_id, chunk)
        results: list[SubcallResult | None] = [None] * len(specs)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=_STOP_CHECK_S, return_when=FIRST_COMPLETED)
            for future in done:
                index = futures[future]
                results[index] = future.result()
                on_result(index, future.result())
            reason = stop() if pending else None
            if reason:
                self._abandon(pending, futures, call_ids, reason, results, on_result)
                break
        return [
            r if r is not None else SubcallResult(ok=False, text="Error: lost") for r in results
        ]

    def _chunks(
        self, specs: Sequence[SubcallSpec], call_ids: list[str]
    ) -> list[tuple[str, list[str]]]:
        """(job id, call ids) per task; a task serves one job, whose cancel flag it reads."""
        by_job: dict[str, list[str]] = {}
        for call_id, spec in zip(call_ids, specs, strict=True):
            by_job.setdefault(spec.job_id, []).append(call_id)
        chunks = []
        for job_id, ids in by_job.items():
            start = 0
            for size in chunk_sizes(len(ids), self._chunk_size, self._spread_tasks):
                chunks.append((job_id, ids[start : start + size]))
                start += size
        return chunks

    def _send(self, producer: Producer, job_id: str, call_ids: list[str]) -> None:
        # Built without a ``task-sent`` event (``task_send_sent_event`` stays on for the
        # orchestrate task, which ``send_task`` would apply to every task): an llm task
        # shows up in Flower when a worker receives it, and the event was one more publish
        # per task from the orchestrator.
        amqp = self._app.amqp
        message = amqp.create_task_message(
            uuid.uuid4().hex,
            LLM_TASK,
            [job_id, call_ids, self._collector.waiter_id],
            create_sent_event=False,
            ignore_result=True,
        )
        amqp.send_task_message(producer, LLM_TASK, message, queue=LLM_QUEUE)

    def _abandon(
        self,
        pending: set[Future[SubcallResult]],
        futures: dict[Future[SubcallResult], int],
        call_ids: list[str],
        reason: str,
        results: list[SubcallResult | None],
        on_result: ResultCallback,
    ) -> None:
        """Drop calls not yet answered: deleting the prompt makes queued work a no-op."""
        pipe = self._client.pipeline(transaction=False)
        for future in pending:
            index = futures[future]
            pipe.delete(keys.subcall_prompt(call_ids[index]))
            self._collector.forget(call_ids[index])
            results[index] = not_run(reason)
            on_result(index, results[index])  # type: ignore[arg-type]
        pipe.execute()

    def close(self) -> None:
        self._collector.close()
