"""Sub-call replies, collected for a whole orchestrator process over one connection.

llm workers RPUSH each reply onto ``keys.subcall_replies(waiter_id)`` (in
``rlm_jobs/scripts/call_complete.lua``); one thread per orchestrator process BLPOPs that
list, drains what else is there in one LPOP, and hands each reply to the waiting call. A
process with 200 jobs in flight still holds one blocking connection, and nothing ever
waits on a Celery result inside a task.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable
from typing import Any

import redis

from rlm_jobs import keys, timing
from sandbox.records import Record, SubcallResult, WireError

log = logging.getLogger(__name__)

# Replies taken per LPOP once BLPOP found some: a fan-out's replies arrive in bursts, and
# one round trip per burst instead of per reply is what keeps a batch of hundreds cheap.
_DRAIN_COUNT = 100


class Reply(Record):
    """What an llm worker sends back for one call: its id and the one result record."""

    call_id: str
    result: SubcallResult


# Where a batch's answers arrive: (call id, result), in the order they come.
Inbox = queue.SimpleQueue[tuple[str, SubcallResult]]


class ReplyCollector:
    def __init__(self, client: redis.Redis, waiter_id: str) -> None:
        self._client = client
        self.waiter_id = waiter_id
        self._lock = threading.Lock()
        # call id -> the inbox of the batch waiting for it; each call is answered once.
        self._waiting: dict[str, Inbox] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rlm-replies", daemon=True)
        self._thread.start()

    def expect(self, call_ids: Iterable[str], inbox: Inbox) -> None:
        """Register interest before the calls are sent, so no reply can slip past."""
        with self._lock:
            for call_id in call_ids:
                self._waiting[call_id] = inbox

    def forget(self, call_ids: Iterable[str]) -> None:
        with self._lock:
            for call_id in call_ids:
                self._waiting.pop(call_id, None)

    def deliver(self, call_id: str, result: SubcallResult) -> None:
        """Hand a call's result to the batch waiting for it (a reply, or a result found
        another way when the reply went missing); later ones for the call are dropped."""
        with self._lock:
            inbox = self._waiting.pop(call_id, None)
        if inbox is not None:
            inbox.put((call_id, result))

    def _deliver(self, raw: Any) -> None:
        try:
            reply = Reply.from_json(raw)
        except WireError:
            log.warning("dropping a malformed sub-call reply: %.200r", raw)
            return
        # A duplicate delivery of a call, or a call the job gave up on: nothing waits for it.
        self.deliver(reply.call_id, reply.result)

    def _run(self) -> None:
        key = keys.subcall_replies(self.waiter_id)
        while not self._stop.is_set():
            try:
                item = self._client.blpop([key], timeout=timing.REPLY_POLL_S)
            except redis.RedisError:
                log.exception("reply collector lost Redis; retrying")
                self._stop.wait(1.0)
                continue
            if item is None:
                continue
            self._deliver(item[1])
            self._drain(key)

    def _drain(self, key: str) -> None:
        while not self._stop.is_set():
            try:
                items: Any = self._client.lpop(key, _DRAIN_COUNT)
            except redis.RedisError:
                log.exception("reply collector lost Redis while draining; back to BLPOP")
                return
            for raw in items or ():
                self._deliver(raw)
            if not items or len(items) < _DRAIN_COUNT:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=timing.REPLY_POLL_S + 2)
