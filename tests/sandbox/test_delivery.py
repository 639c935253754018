"""Delivery on the wire with real runtimes: re-publish until acknowledged, parts, limits.

The sandbox writes nothing to Redis, so what it sends reaches the host only by pub/sub:
these tests lose deliveries on purpose and check that nothing is lost for the job.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rlm_jobs import keys
from rlm_jobs.config import Settings
from rlm_jobs.contexts import put_context
from rlm_jobs.sandboxes import acl
from rlm_jobs.sandboxes.base import SandboxProcess
from rlm_jobs.sandboxes.channel import SandboxChannel
from rlm_jobs.sandboxes.registry import create_backend
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.session import SandboxSession
from sandbox import wire
from tests.support import OpenSession, eventually

# The runtime's own bookkeeping, read from inside a cell.
UNACKED = (
    "import gc\n"
    "runtime = next(o for o in gc.get_objects() if type(o).__name__ == 'Runtime')\n"
    "print('unacked', runtime.outbox.unacked)"
)


def run(session: SandboxSession, code: str, limit: int = 2000) -> Any:
    return session.run_cell(code, timeout_s=20, max_output_chars=limit)


class Watcher:
    """Every payload published on one channel, decoded, as a bystander sees it."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(channel)
        assert self._pubsub.get_message(timeout=5)["type"] == "subscribe"
        self.seen: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            msg = self._pubsub.get_message(timeout=0.1)
            if msg is not None and msg["type"] == "message":
                self.seen.append(wire.decode_to_host(msg["data"]))

    def count(self, kind: type[Any]) -> int:
        return sum(isinstance(m, kind) for m in list(self.seen))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()


@pytest.fixture
def bare_sandbox(
    redis_client: redis.Redis, settings: Settings, services: SandboxServices, backend_name: str
) -> Iterator[tuple[str, SandboxProcess]]:
    """A runtime launched straight from a backend, with nobody on its output channel yet."""
    sandbox_id = wire.new_id()
    context_key = keys.context_blob(put_context(redis_client, "bare").sha256)
    password = acl.create_user(redis_client, services.identities, sandbox_id, context_key)
    bootstrap = wire.Bootstrap(
        sandbox_id=sandbox_id,
        redis_unix_socket=settings.sandbox_redis_socket,
        username=keys.sandbox_user(sandbox_id),
        password=password,
        channel_in=keys.sandbox_to_sandbox(sandbox_id),
        channel_out=keys.sandbox_to_host(sandbox_id),
        message_key_prefix=keys.sandbox_message_prefix(sandbox_id),
        context_key=context_key,
    )
    process = create_backend(settings, backend_name).launch(bootstrap)
    yield sandbox_id, process
    process.kill()
    acl.delete_user(redis_client, services.identities, sandbox_id)


def test_a_ready_published_before_the_host_listens_is_published_again_until_acknowledged(
    redis_client: redis.Redis,
    services: SandboxServices,
    bare_sandbox: tuple[str, SandboxProcess],
) -> None:
    sandbox_id, _ = bare_sandbox
    # Given a runtime that said Ready while its host was not listening yet
    watcher = Watcher(redis_client, keys.sandbox_to_host(sandbox_id))
    try:
        assert eventually(lambda: watcher.count(wire.Ready) >= 1, 30)
        # When the host subscribes only now
        channel = SandboxChannel(redis_client, services.hub, sandbox_id)
        try:
            deadline = time.monotonic() + 10
            got: list[wire.ToHost] = []
            while not any(isinstance(m, wire.Ready) for m in got) and time.monotonic() < deadline:
                msg = channel.receive(0.2)
                if msg is not None:
                    got.append(msg)
            # Then it still gets Ready (published again: the bystander saw it twice)
            readies = [m for m in got if isinstance(m, wire.Ready)]
            assert len(readies) == 1
            assert eventually(lambda: watcher.count(wire.Ready) >= 2)
            assert {m.id for m in watcher.seen if isinstance(m, wire.Ready)} == {readies[0].id}
            # and once acknowledged, the runtime holds nothing more to publish again.
            cell = wire.ExecCell(seq=1, id="c1", code=UNACKED, timeout_s=10, max_output_chars=500)
            channel.send(cell)
            done = None
            while done is None and time.monotonic() < deadline + 10:
                msg = channel.receive(0.2)
                if isinstance(msg, wire.CellDone) and msg.reply_to == "c1":
                    done = msg
            assert done is not None and done.result.stdout == "unacked 0\n"
        finally:
            channel.close()
    finally:
        watcher.close()


def test_a_cell_result_lost_on_the_way_to_the_host_arrives_again(
    open_session: OpenSession, redis_client: redis.Redis
) -> None:
    session = open_session()
    sbx = session._sbx
    assert sbx is not None
    sub = sbx.channel.sub
    real_get = sub.get
    dropped: list[str | bytes] = []

    def lossy_get(timeout_s: float) -> str | bytes | None:
        raw = real_get(timeout_s)
        if raw is not None and not dropped and json.loads(raw).get("type") == "cell_result":
            dropped.append(raw)  # the first delivery of a result is lost
            return None
        return raw

    sub.get = lossy_get  # type: ignore[method-assign]
    watcher = Watcher(redis_client, keys.sandbox_to_host(sbx.id))
    try:
        out = run(session, "print('delivered')")
        assert out.stdout == "delivered\n" and out.error is None
        assert len(dropped) == 1
        assert eventually(lambda: watcher.count(wire.CellDone) >= 2)  # published again
        assert run(session, UNACKED).stdout == "unacked 0\n"  # the repeat was acknowledged
    finally:
        watcher.close()


@pytest.mark.parametrize("backend_name", ["process"])
def test_large_results_come_in_parts_and_a_hostile_part_stream_is_bounded(
    open_session: OpenSession,
) -> None:
    session = open_session()
    sbx = session._sbx
    assert sbx is not None
    out = run(session, "print('z' * 300_000)", limit=400_000)
    assert out.stdout == "z" * 300_000 + "\n"
    # A cell that publishes parts of 60 messages that claim 2048 parts and never finish.
    flood = (
        "import gc, json\n"
        "runtime = next(o for o in gc.get_objects() if type(o).__name__ == 'Runtime')\n"
        "r, out = runtime.redis, runtime.boot.channel_out\n"
        "for m in range(60):\n"
        "    for i in range(8):\n"
        "        part = {'type': 'part', 'message_id': f'm{m}', 'index': i,\n"
        "                'total': 2048, 'data': 'y' * 32768}\n"
        "        r.call('PUBLISH', out, json.dumps(part))\n"
        "print('flooded')"
    )
    assert run(session, flood).stdout == "flooded\n"
    parts = sbx.channel._parts
    assert parts.partial_messages <= wire.MAX_PARTIAL_MESSAGES
    assert parts.held_bytes <= wire.MAX_PARTIAL_MESSAGES * 8 * 32768
    assert parts.dropped >= 60 - wire.MAX_PARTIAL_MESSAGES - 1
    again = run(session, "print('w' * 200_000)", limit=400_000)
    assert again.stdout == "w" * 200_000 + "\n"


# The wire's limits are the same for every backend; one suffices.
@pytest.mark.parametrize("backend_name", ["process"])
def test_a_request_or_result_larger_than_the_wire_carries_fails_clearly(
    open_session: OpenSession,
) -> None:
    session = open_session()
    big = f"'p' * {wire.MAX_MESSAGE_BYTES // 2}"
    out = run(
        session, f"try:\n    llm_query_batched([{big}] * 3)\nexcept ValueError as e:\n    print(e)"
    )
    assert "send fewer or shorter prompts per call" in out.stdout, out
    out = run(session, f"FINAL('f' * {wire.MAX_MESSAGE_BYTES + 1})")
    assert out.final is None
    assert out.error is not None and "could not be sent back" in out.error
    assert run(session, "print('still here')").stdout == "still here\n"
