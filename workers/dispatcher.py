"""The Celery dispatcher: the prompts of a batch go to the ``rlm.llm`` queue in chunks.

Prompts are stored in Redis (``rlm_jobs.calls``) and a task carries only ids (the job, its
chunk's call ids and where to reply), so no message grows with the prompts. A chunk's
prompts run concurrently on the llm worker that takes it, and each reply is pushed as soon
as it is ready; replies come back through ``ReplyCollector`` in any order, are streamed to
``on_result`` and put back in prompt order here.

While it waits, a batch looks at its calls now and then (one script): a call whose llm
worker died (its claim lapsed) is sent again at once, so it waits seconds, not the broker's
visibility timeout; a call answered whose reply went missing is taken from the stored
results; a call nobody took while the llm queue is empty (its message was lost, or sits
in a dead worker's prefetch) is sent again too. Workers claim a call before running it, so
a call sent twice is still answered once.
"""

from __future__ import annotations

import logging
import math
import queue
import time
import uuid

from celery import Celery
from kombu.messaging import Producer

from rlm_jobs import timing
from rlm_jobs.calls import CallStore, StoredCall
from rlm_jobs.dispatch import CallBatch, ResultCallback, StopCheck
from sandbox.records import SubcallResult, not_run
from workers.names import LLM_QUEUE, LLM_TASK
from workers.replies import Inbox, ReplyCollector

log = logging.getLogger(__name__)

# A batch goes out as at least this many tasks (one per prompt below it) before prompts
# share a task. Celery costs milliseconds of CPU per task (message, ack, events), so sharing pays,
# but a chunk runs inside one worker process: a batch in a few big chunks would keep most
# of the llm pool idle. Workers reserve chunks by their prompts (workers/credit.py), so
# chunks this small spread evenly; past 32 * llm_chunk_size prompts chunks are full.
SPREAD_TASKS = 32


def send_llm_task(
    app: Celery, producer: Producer, job_id: str, call_ids: list[str], *, forwarded: bool = False
) -> None:
    """One llm task for ``call_ids``; ``forwarded``: the part of a chunk its first worker
    had no slots for (``workers.llm_slots``), run wherever it lands."""
    # Built without a ``task-sent`` event (``task_send_sent_event`` stays on for the
    # orchestrate task, which ``send_task`` would apply to every task): an llm task shows
    # up in Flower when a worker receives it, and the event was one more publish per task.
    amqp = app.amqp
    message = amqp.create_task_message(
        uuid.uuid4().hex,
        LLM_TASK,
        [job_id, call_ids],
        {"forwarded": True} if forwarded else None,
        create_sent_event=False,
        ignore_result=True,
    )
    # No declare: Celery sends to a direct queue through the anonymous exchange, which
    # kombu's Redis transport turns into an LPUSH on the queue's list, declared or not;
    # checking its declaration cache cost some 60 µs of CPU per send.
    amqp.send_task_message(producer, LLM_TASK, message, queue=LLM_QUEUE, declare=[])


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
        calls: CallStore,
        collector: ReplyCollector,
        *,
        chunk_size: int,
        spread_tasks: int = SPREAD_TASKS,
    ) -> None:
        self._app = app
        self._calls = calls
        self._collector = collector
        self._chunk_size = chunk_size
        self._spread_tasks = spread_tasks

    def run_batch(
        self, batch: CallBatch, *, on_result: ResultCallback, stop: StopCheck
    ) -> list[SubcallResult]:
        halt = stop()
        if halt:
            return [not_run(halt.reason) for _ in batch.call_ids]
        index = {call_id: i for i, call_id in enumerate(batch.call_ids)}
        inbox: Inbox = queue.SimpleQueue()
        # Expected before they are recorded: a worker still running a call of an earlier
        # run of this job answers whoever the record names as soon as it is re-recorded.
        self._collector.expect(batch.call_ids, inbox)
        answered = self._calls.prepare(
            batch.job_id,
            batch.model,
            self._collector.waiter_id,
            batch.call_ids,
            batch.requests,
            batch.context,
        )
        results: list[SubcallResult | None] = [None] * len(batch.call_ids)
        self._collector.forget(answered)
        for call_id, stored in answered.items():
            results[index[call_id]] = stored.result
            on_result(index[call_id], stored.result)
        # In prompt order: a chunk holds neighbouring prompts, and the first go out first.
        waiting = _Waiting(self, batch, [c for c in batch.call_ids if c not in answered])
        self._send(batch.job_id, waiting.call_ids)
        open_ids = set(waiting.call_ids)
        while open_ids:
            try:
                arrived = [inbox.get(timeout=timing.STOP_CHECK_S)]
            except queue.Empty:
                arrived = []
            while not inbox.empty():  # a burst: take it whole before looking up again
                arrived.append(inbox.get_nowait())
            for call_id, result in arrived:
                if call_id in open_ids:
                    open_ids.discard(call_id)
                    results[index[call_id]] = result
                    on_result(index[call_id], result)
            if arrived:
                waiting.call_ids = [c for c in waiting.call_ids if c in open_ids]
            halt = stop() if open_ids else None
            if halt:
                pending_ids = [c for c in batch.call_ids if c in open_ids]
                self._collector.forget(pending_ids)
                for call_id in pending_ids:
                    results[index[call_id]] = not_run(halt.reason)
                    on_result(index[call_id], not_run(halt.reason))
                if not halt.keep_calls:  # deleting the records makes queued work a no-op
                    self._calls.abandon(pending_ids)
                break
            for call_id, stored in waiting.check_if_due().items():
                self._collector.deliver(call_id, stored.result)
        return [r if r is not None else not_run("the sub-call was lost") for r in results]

    def _chunks(self, job_id: str, call_ids: list[str]) -> list[list[str]]:
        """The call ids of each task; a task serves one job, whose cancel flag it reads."""
        chunks, start = [], 0
        for size in chunk_sizes(len(call_ids), self._chunk_size, self._spread_tasks):
            chunks.append(call_ids[start : start + size])
            start += size
        return chunks

    def _send(self, job_id: str, call_ids: list[str]) -> None:
        if not call_ids:
            return
        with self._app.producer_or_acquire() as producer:
            for chunk in self._chunks(job_id, call_ids):
                self._send_one(producer, job_id, chunk)

    def _send_one(self, producer: Producer, job_id: str, call_ids: list[str]) -> None:
        send_llm_task(self._app, producer, job_id, call_ids)

    def close(self) -> None:
        self._collector.close()


class _Waiting:
    """The calls of one batch still awaited, looked at every ``timing.CALL_CHECK_S``."""

    def __init__(self, dispatcher: CeleryDispatcher, batch: CallBatch, call_ids: list[str]):
        self._dispatcher = dispatcher
        self._batch = batch
        self.call_ids = call_ids
        now = time.monotonic()
        self._next_check = now + timing.CALL_CHECK_S
        self._unclaimed_since: dict[str, float] = {}

    def check_if_due(self) -> dict[str, StoredCall]:
        """Send again what needs it; the calls answered whose replies did not arrive."""
        now = time.monotonic()
        if now < self._next_check or not self.call_ids:
            return {}
        self._next_check = now + timing.CALL_CHECK_S
        calls = self._dispatcher._calls
        queued, states = calls.check(self._batch.job_id, self.call_ids, LLM_QUEUE)
        found: dict[str, StoredCall] = {}
        resend: list[str] = []
        lost: list[str] = []
        for call_id, state in states.items():
            if isinstance(state, StoredCall):
                found[call_id] = state
            elif state == "lapsed":
                resend.append(call_id)
            elif state == "lost":
                lost.append(call_id)
            elif state == "unclaimed":
                since = self._unclaimed_since.setdefault(call_id, now)
                if queued == 0 and now - since >= timing.UNCLAIMED_RESEND_S:
                    self._unclaimed_since[call_id] = now
                    resend.append(call_id)
            else:
                self._unclaimed_since.pop(call_id, None)
        if lost:  # its record is gone (Redis lost it): record it again
            position = {c: i for i, c in enumerate(self._batch.call_ids)}
            requests = [self._batch.requests[position[c]] for c in lost]
            found.update(
                calls.prepare(
                    self._batch.job_id,
                    self._batch.model,
                    self._dispatcher._collector.waiter_id,
                    lost,
                    requests,
                    self._batch.context,
                )
            )
            resend += [c for c in lost if c not in found]
        if resend:
            log.warning(
                "job %s: sending %d sub-calls again (their llm worker died, or their message "
                "was lost)",
                self._batch.job_id,
                len(resend),
            )
            self._dispatcher._send(self._batch.job_id, resend)
        return found
