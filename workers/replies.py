"""Sub-call replies, collected for a whole orchestrator process over one connection.

llm workers RPUSH each reply onto ``keys.subcall_replies(waiter_id)``; one thread per
orchestrator process BLPOPs that list and hands each reply to the waiting call. A
process with 200 jobs in flight still holds one blocking connection, and nothing ever
waits on a Celery result inside a task.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict

from rlm_jobs import keys
from rlm_jobs.dispatch import SubcallResult

log = logging.getLogger(__name__)

# BLPOP wakes this often to notice a stop request.
_POLL_S = 1


class Reply(BaseModel):
    """What an llm worker sends back for one call."""

    model_config = ConfigDict(extra="forbid")

    call_id: str
    result: SubcallResult


def push_reply(client: redis.Redis, waiter_id: str, reply: Reply) -> None:
    key = keys.subcall_replies(waiter_id)
    pipe = client.pipeline()
    pipe.rpush(key, reply.model_dump_json())
    # Replies for a process that died are useless after a while.
    pipe.expire(key, keys.SANDBOX_KEY_TTL_S)
    pipe.execute()


class ReplyCollector:
    def __init__(self, client: redis.Redis, waiter_id: str) -> None:
        self._client = client
        self.waiter_id = waiter_id
        self._lock = threading.Lock()
        self._waiting: dict[str, Future[SubcallResult]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rlm-replies", daemon=True)
        self._thread.start()

    def expect(self, call_id: str) -> Future[SubcallResult]:
        """Register interest before the call is sent, so no reply can slip past."""
        future: Future[SubcallResult] = Future()
        with self._lock:
            self._waiting[call_id] = future
        return future

    def forget(self, call_id: str) -> None:
        with self._lock:
            self._waiting.pop(call_id, None)

    def _deliver(self, raw: Any) -> None:
        try:
            reply = Reply.model_validate_json(raw)
        except ValueError:
            log.warning("dropping a malformed sub-call reply: %.200r", raw)
            return
        with self._lock:
            future = self._waiting.pop(reply.call_id, None)
        # A duplicate delivery of a call, or a call the job gave up on: nothing waits for it.
        if future is not None and not future.done():
            future.set_result(reply.result)

    def _run(self) -> None:
        key = keys.subcall_replies(self.waiter_id)
        while not self._stop.is_set():
            try:
                item = self._client.blpop([key], timeout=_POLL_S)
            except redis.RedisError:
                log.exception("reply collector lost Redis; retrying")
                self._stop.wait(1.0)
                continue
            if item is not None:
                self._deliver(item[1])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=_POLL_S + 2)
