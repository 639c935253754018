"""The Celery dispatcher: each llm_query prompt becomes one ``rlm.llm`` task.

Prompts are stored in Redis and the task carries only the call id and where to reply, so
no message grows with the prompt. A batch is sent in one go and fans out over the whole
llm pool; replies come back through ``ReplyCollector`` in any order and are put back in
prompt order here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait

import redis
from celery import Celery

from rlm_jobs import keys
from rlm_jobs.dispatch import ResultCallback, StopCheck, SubcallResult, SubcallSpec
from workers.app import LLM_QUEUE, LLM_TASK
from workers.replies import ReplyCollector

# How often a waiting batch checks whether its job must stop (cancel, budget, timeout).
_STOP_CHECK_S = 0.25


class CeleryDispatcher:
    def __init__(self, app: Celery, client: redis.Redis, collector: ReplyCollector) -> None:
        self._app = app
        self._client = client
        self._collector = collector

    def run_batch(
        self, specs: Sequence[SubcallSpec], *, on_result: ResultCallback, stop: StopCheck
    ) -> list[SubcallResult]:
        reason = stop()
        if reason:
            return [SubcallResult(ok=False, text=f"Error: not run: {reason}") for _ in specs]
        call_ids = [uuid.uuid4().hex for _ in specs]
        pipe = self._client.pipeline(transaction=False)
        for call_id, spec in zip(call_ids, specs, strict=True):
            record = {"job_id": spec.job_id, "model": spec.model, "prompt": spec.prompt}
            pipe.set(keys.subcall_prompt(call_id), json.dumps(record), ex=keys.SANDBOX_KEY_TTL_S)
        pipe.execute()
        futures: dict[Future[SubcallResult], int] = {
            self._collector.expect(call_id): i for i, call_id in enumerate(call_ids)
        }
        with self._app.producer_or_acquire() as producer:
            for call_id in call_ids:
                self._app.send_task(
                    LLM_TASK,
                    args=[call_id, self._collector.waiter_id],
                    queue=LLM_QUEUE,
                    producer=producer,
                )
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

    def _abandon(
        self,
        pending: set[Future[SubcallResult]],
        futures: dict[Future[SubcallResult], int],
        call_ids: list[str],
        reason: str,
        results: list[SubcallResult | None],
        on_result: ResultCallback,
    ) -> None:
        """Drop calls not yet answered: deleting the prompt makes a queued task a no-op."""
        pipe = self._client.pipeline(transaction=False)
        for future in pending:
            index = futures[future]
            pipe.delete(keys.subcall_prompt(call_ids[index]))
            self._collector.forget(call_ids[index])
            results[index] = SubcallResult(ok=False, text=f"Error: not run: {reason}")
            on_result(index, results[index])  # type: ignore[arg-type]
        pipe.execute()

    def close(self) -> None:
        self._collector.close()
