"""One pub/sub connection per process for every sandbox's out-channel.

Each ``SandboxSession`` subscribes its sandbox's channel here and reads a private queue, so
200 concurrent sandboxes share one Redis connection and one reader thread. ``subscribe``
returns only after Redis confirmed the subscription: a sandbox launched afterwards cannot
publish into the void. The reader thread stops (closing the connection) when the last
subscription goes and starts again with the next one.

If the connection drops, redis-py reconnects and re-subscribes; if that fails, every
subscription is failed with ``SandboxError`` and the hub forgets its connection, so the next
subscriber starts afresh. Messages published while disconnected are lost; the sandbox
publishes the ones that matter again until the host acknowledges them (``sandbox.wire``).
Each channel's queue is bounded in messages and bytes and takes no payload larger than
the wire's ``MAX_PAYLOAD_BYTES``: what a sandbox floods beyond that is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Any

import redis

from rlm_jobs.errors import SandboxError
from sandbox import wire

log = logging.getLogger(__name__)

# How long the reader blocks per poll; also how fast it notices it has nothing left to do.
POLL_S = 0.2
# A sandbox that floods its channel fills its own queue, not the orchestrator's memory:
# room for the parts of one message of the largest size, then new payloads are dropped
# (a sandbox publishes what must arrive again until it is acknowledged).
MAX_QUEUED_PER_CHANNEL = 10_000
MAX_QUEUED_BYTES_PER_CHANNEL = wire.MAX_MESSAGE_BYTES + wire.MAX_PAYLOAD_BYTES
SUBSCRIBE_TIMEOUT_S = 10.0


class Subscription:
    """Messages of one channel, in order; ``get`` raises once the hub has failed."""

    def __init__(self, hub: PubSubHub, channel: str) -> None:
        self.channel = channel
        self._hub = hub
        self._queue: queue.Queue[str | bytes] = queue.Queue(MAX_QUEUED_PER_CHANNEL)
        self._bytes_lock = threading.Lock()
        self.queued_bytes = 0
        self.confirmed = threading.Event()
        self.failure: str | None = None
        self.dropped = 0

    def get(self, timeout_s: float) -> str | bytes | None:
        """The next message, or None if none came within ``timeout_s``."""
        if self.failure is not None:
            raise SandboxError(self.failure)
        try:
            data = self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            if self.failure is not None:
                raise SandboxError(self.failure) from None
            return None
        with self._bytes_lock:
            self.queued_bytes -= len(data)
        return data

    def _put(self, data: str | bytes) -> None:
        """Called by the hub's reader thread only."""
        size = len(data)
        with self._bytes_lock:
            room = (
                size <= wire.MAX_PAYLOAD_BYTES
                and self.queued_bytes + size <= MAX_QUEUED_BYTES_PER_CHANNEL
            )
            if room:
                self.queued_bytes += size
        if room:
            try:
                self._queue.put_nowait(data)
                return
            except queue.Full:
                with self._bytes_lock:
                    self.queued_bytes -= size
        if not self.dropped:
            log.warning("dropping messages on %s: too large or too many queued", self.channel)
        self.dropped += 1

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self.confirmed.set()

    def close(self) -> None:
        self._hub.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PubSubHub:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._subs: dict[str, Subscription] = {}
        self._pubsub: Any = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def subscriptions(self) -> int:
        with self._lock:
            return len(self._subs)

    def subscribe(self, channel: str) -> Subscription:
        sub = Subscription(self, channel)
        with self._lock:
            if self._closed:
                raise SandboxError("the pub/sub hub is closed: no new sandbox may subscribe")
            if channel in self._subs:
                raise SandboxError(f"channel {channel} already has a subscriber in this process")
            self._subs[channel] = sub
            try:
                if self._thread is None:
                    self._pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
                    self._thread = threading.Thread(
                        target=self._read, args=(self._pubsub,), name="rlm-pubsub-hub", daemon=True
                    )
                    self._pubsub.subscribe(channel)
                    self._thread.start()
                else:
                    self._pubsub.subscribe(channel)
            except redis.RedisError as exc:
                del self._subs[channel]
                raise SandboxError(f"could not subscribe to {channel}: {exc}") from exc
        if not sub.confirmed.wait(SUBSCRIBE_TIMEOUT_S):
            self.unsubscribe(sub)
            raise SandboxError(f"Redis did not confirm the subscription to {channel}")
        if sub.failure is not None:
            self.unsubscribe(sub)
            raise SandboxError(sub.failure)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if self._subs.get(sub.channel) is not sub:
                return
            del self._subs[sub.channel]
            if self._pubsub is None:
                return
            if not self._subs:
                # Close now rather than when the reader wakes: the client may be closed next.
                self._stop(self._pubsub)
                return
            try:
                self._pubsub.unsubscribe(sub.channel)
            except redis.RedisError as exc:
                log.warning("unsubscribe from %s failed: %s", sub.channel, exc)

    def close(self) -> None:
        """Fail every subscription and stop the reader thread; safe to call twice."""
        with self._lock:
            self._closed = True
            failed = list(self._subs.values())
            self._subs.clear()
            thread = self._thread
            if self._pubsub is not None:
                self._stop(self._pubsub)
        for sub in failed:
            sub._fail("the pub/sub hub was closed")
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2 * POLL_S + 1)

    def _read(self, pubsub: Any) -> None:
        while True:
            with self._lock:
                if not self._subs or self._pubsub is not pubsub:
                    self._stop(pubsub)
                    return
            try:
                msg = pubsub.get_message(timeout=POLL_S)
            # Not only RedisError: when unsubscribe() closes the connection mid-read,
            # redis-py fails on its torn-down internals (AttributeError on a None reader).
            except Exception as exc:
                with self._lock:
                    retired = self._pubsub is not pubsub
                if not retired:
                    # redis-py already retried the reconnect; the connection is gone for good.
                    self._fail_all(pubsub, f"lost the Redis pub/sub connection: {exc}")
                return
            if msg is None:
                continue
            channel = msg["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            with self._lock:
                sub = self._subs.get(channel)
            if sub is None:
                continue
            if msg["type"] == "message":
                sub._put(msg["data"])
            elif msg["type"] == "subscribe":
                sub.confirmed.set()

    def _stop(self, pubsub: Any) -> None:
        """Called with the lock held: retire this connection (its reader thread then exits)."""
        if self._pubsub is pubsub:
            self._pubsub = None
            self._thread = None
        with contextlib.suppress(redis.RedisError, OSError):
            pubsub.close()

    def _fail_all(self, pubsub: Any, reason: str) -> None:
        log.error("%s", reason)
        with self._lock:
            failed = list(self._subs.values())
            self._subs.clear()
            self._stop(pubsub)
        for sub in failed:
            sub._fail(reason)
