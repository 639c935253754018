"""workers/transport.py against a real Redis that is killed at the worst moment.

kombu takes a message off its queue with BRPOP and only then records it as unacknowledged;
the test crashes Redis exactly between the two (by running the crash as the first step of
kombu's own recording), restarts it on its AOF a moment later, and checks the message
survives: delivered, recorded, and acknowledgeable.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from kombu import Connection, Queue
from kombu.transport import redis as kombu_redis

from rlm_jobs.redis_server import RedisServer
from tests.support.faults import CrashableRedis

pytestmark = pytest.mark.timeout(60)

QUEUE = "rlm.test"


def crash_before_the_first_record(
    monkeypatch: pytest.MonkeyPatch, crashable: CrashableRedis
) -> threading.Timer:
    """Kill Redis when kombu is about to record its first delivery; restart it 0.5 s later
    (the returned timer; join it before the test ends)."""
    record = kombu_redis.QoS.append
    restart = threading.Timer(0.5, crashable.restart)

    def crash_then_record(qos: Any, message: Any, delivery_tag: str) -> Any:
        if not restart.is_alive() and not crashable.crashes:
            crashable.crash()
            restart.start()
        return record(qos, message, delivery_tag)

    monkeypatch.setattr(kombu_redis.QoS, "append", crash_then_record)
    return restart


def test_a_message_taken_as_redis_dies_is_kept_and_delivered(
    monkeypatch: pytest.MonkeyPatch, crashable_redis: CrashableRedis
) -> None:
    client = redis.Redis.from_url(crashable_redis.server.url)
    restart = crash_before_the_first_record(monkeypatch, crashable_redis)
    delivered: list[Any] = []
    queue = Queue(QUEUE)
    with Connection(crashable_redis.server.url, transport="workers.transport:Transport") as conn:
        with conn.Producer() as producer:
            producer.publish({"job": "j1"}, routing_key=QUEUE, declare=[queue])
        try:
            with conn.Consumer(queue, callbacks=[lambda body, msg: delivered.append(msg)]):
                conn.drain_events(timeout=20)
        finally:
            restart.join(10)
        assert crashable_redis.crashes == 1 and crashable_redis.outages_s
        (message,) = delivered
        assert message.payload == {"job": "j1"}
        # Recorded as unacknowledged once Redis was back, so a crash now would not lose it...
        assert client.hlen("unacked") == 1 and client.llen(QUEUE) == 0
        # ... and acknowledging it removes the record.
        message.ack()
        assert client.hlen("unacked") == 0
    client.close()


def test_a_producer_whose_channel_was_closed_still_publishes(redis_server: RedisServer) -> None:
    # A worker riding out a Redis restart handed a job a pooled producer whose channel the
    # cleanup of the lost connection had closed: its publish raised an AttributeError
    # (not a connection error, so not retried) and the job sending sub-calls failed. It
    # must be retried, on a new channel.
    queue = Queue("rlm.test.closed-channel")
    client = redis.Redis.from_url(redis_server.url)
    client.delete(queue.name)
    url = redis_server.url
    with Connection(url, transport="workers.transport:Transport") as conn, conn.Producer() as out:
        out.publish({"n": 1}, routing_key=queue.name, declare=[queue])
        out.channel.close()
        out.publish({"n": 2}, routing_key=queue.name, retry=True)
        # ... on a fresh channel: one the connection tracks and closes, not the dead one
        assert not out.channel.closed
    assert client.llen(queue.name) == 2
