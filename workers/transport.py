"""kombu's Redis transport, made to survive a Redis restart under a running worker.

With kombu 5.7 / Celery 5.7, a worker whose Redis goes away while its channel waits in a
``BRPOP`` and holds unacknowledged messages (``acks_late`` tasks running: always, here)
exits with Celery's "Unrecoverable error: AttributeError('NoneType' object has no
attribute 'hostname')". The consumer cleans up the lost connection twice
(``Connection.collect()``, then ``close()``): the first close stops when reading the
pending ``BRPOP`` fails, before the channel is marked closed; by the second the transport
has forgotten its connection, and the channel's attempt to put its unacknowledged messages
back reads connection parameters from ``None``. The AttributeError is not a connection
error, so it escapes Celery's reconnect loop.

``Channel`` fixes both halves:

- ``close()`` drops a ``BRPOP`` that can no longer be read, so the first close completes
  (it still tries to return unacknowledged messages to their queue; with Redis down that
  fails as a connection error, which the consumer ignores, and they stay in kombu's
  ``unacked`` hash, where the messages' own acknowledgements find them);
- connection parameters are kept from the channel's first connection, so a task that was
  running through the outage can still acknowledge its message on the old channel once
  Redis is back, instead of leaving it to be redelivered after the visibility timeout;
- a closed channel, which a pooled producer can still hold after that cleanup, fails its
  next publish as a connection error, which kombu's retries answer by moving the producer
  to a fresh channel (kombu's own code raises an AttributeError there, which they do not
  catch, and the job that was sending failed).

``QoS`` closes a hole that loses messages: kombu takes a message off its queue with
``BRPOP`` and only then records it in its ``unacked`` hash; when Redis dies between the two,
the message exists only in this process, and kombu drops it (a queued job then never runs).
Recording it is retried for ``delivery_retry_s`` (the app passes ``redis_retry_s``), so the
message is kept and delivered once Redis is back.

It also saves work on every message: kombu's ``conn_or_acquire`` builds a new
``redis.Redis`` (a dict of some 280 reply callbacks, about a millisecond of CPU) for each
publish, acknowledgement and queue-size check; ``Channel`` keeps one per connection pool.

``workers.app.celery_config`` selects ``Transport`` for ``redis://`` broker URLs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from rlm_jobs import timing

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        """Record a delivered message as unacknowledged, through a Redis outage."""
        deadline = time.monotonic() + float(self.channel.delivery_retry_s)
        pause = timing.REDIS_RETRY_FIRST_S
        tries = 0
        while True:
            try:
                super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
            except self.channel.connection_errors:
                if time.monotonic() + pause > deadline:
                    raise
                tries += 1
                time.sleep(pause)
                pause = min(timing.REDIS_RETRY_CAP_S, pause * 2)
                continue
            if tries:
                log.warning("kept message %s through a Redis outage", delivery_tag)
            return


class Channel(kombu_redis.Channel):
    QoS = QoS
    from_transport_options: tuple[str, ...] = (  # type: ignore[assignment]
        *kombu_redis.Channel.from_transport_options,
        "delivery_retry_s",
    )
    # Transport option: how long recording a delivered message is retried (see QoS).
    delivery_retry_s: float = 60.0
    _rlm_connparams: dict[bool, dict[str, Any]] | None = None
    _rlm_sync_client: redis.Redis | None = None

    @contextlib.contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client is not None:
            yield client
            return
        # A client is only a handle on the pool (thread-safe); a new pool (after a
        # reconnect) gets a new one.
        cached = self._rlm_sync_client
        if cached is None or cached.connection_pool is not self.pool:
            cached = self._rlm_sync_client = self._create_client()  # type: ignore[no-untyped-call]
        yield cached

    def close(self) -> None:
        if self._in_poll and not self.closed:
            # The reply to a BRPOP on a broken connection cannot be read; kombu's own
            # close would raise here, leaving the channel half-closed.
            with contextlib.suppress(Empty, *self.connection_errors):
                self._brpop_read()  # type: ignore[no-untyped-call]
        super().close()  # type: ignore[no-untyped-call]

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection is None:
            # A closed channel, which a pooled producer can still hold after the cleanup of
            # a lost connection: a connection error, which kombu's publish retries answer
            # by moving the producer to a fresh channel (kombu's own code raised an
            # AttributeError here, which nothing retries, and failed the job sending).
            raise redis.ConnectionError("the broker channel was closed with its connection")
        cached = self._rlm_connparams
        if cached is None:
            cached = self._rlm_connparams = {}
        if asynchronous not in cached or self.connection.client is not None:
            params = super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
            cached[asynchronous] = params
        return dict(cached[asynchronous])


class Transport(kombu_redis.Transport):
    Channel = Channel
