"""At most ``sandbox_start_concurrency`` sandboxes start at once, jobs before pool refills.

Measured from outside, in Redis's own order of events: a start begins when its liveness key
is first written (right after it got its slot, before its ACL user and process exist) and
ends when the runtime publishes Ready. Both arrive on one pub/sub connection, so the number
of starts under way at any moment is read without timing guesses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from rlm_jobs import keys
from rlm_jobs.config import Settings
from rlm_jobs.contexts import put_context
from rlm_jobs.sandboxes.base import SandboxBackend
from rlm_jobs.sandboxes.pool import SandboxPool
from rlm_jobs.sandboxes.registry import create_backend
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.session import SandboxSession
from sandbox import wire
from tests.support import MakeServices, answer_from_text, eventually

pytestmark = pytest.mark.timeout(180)

START_S = 60.0


class StartWatch:
    """Records sandbox starts and Ready messages in the order Redis saw them."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        client.config_set("notify-keyspace-events", "K$")
        self._pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        self._alive_channel = f"__keyspace@0__:{keys.sandbox_alive('')}"
        self._out_head, _, self._out_tail = keys.sandbox_to_host("\0").partition("\0")
        self._pubsub.psubscribe(f"{self._alive_channel}*", keys.sandbox_to_host("*"))
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        begun: set[str] = set()
        while not self._stop.is_set():
            msg = self._pubsub.get_message(timeout=0.1)
            if msg is None or msg["type"] != "pmessage":
                continue
            channel = str(msg["channel"])
            if channel.startswith(self._alive_channel):
                sandbox_id = channel[len(self._alive_channel) :]
                if msg["data"] == "set" and sandbox_id not in begun:  # later sets: refreshes
                    begun.add(sandbox_id)
                    self._record("start", sandbox_id)
                continue
            sandbox_id = channel.removeprefix(self._out_head).removesuffix(self._out_tail)
            decoded = wire.decode_to_host(msg["data"])
            if isinstance(decoded, wire.Ready):
                self._record("ready", sandbox_id)

    def _record(self, what: str, sandbox_id: str) -> None:
        with self._lock:
            self.events.append((what, sandbox_id))

    def started(self) -> list[str]:
        with self._lock:
            return [sandbox_id for what, sandbox_id in self.events if what == "start"]

    def ready(self) -> set[str]:
        with self._lock:
            return {sandbox_id for what, sandbox_id in self.events if what == "ready"}

    def most_at_once(self) -> int:
        """The most starts that had begun and not yet said Ready, at any point."""
        under_way: set[str] = set()
        most = 0
        with self._lock:
            for what, sandbox_id in self.events:
                if what == "start":
                    under_way.add(sandbox_id)
                    most = max(most, len(under_way))
                else:
                    under_way.discard(sandbox_id)
        return most

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()
        self._client.config_set("notify-keyspace-events", "")


@pytest.fixture
def watch(redis_client: redis.Redis) -> Iterator[StartWatch]:
    start_watch = StartWatch(redis_client)
    yield start_watch
    start_watch.close()


OpenSessions = Callable[..., list[SandboxSession]]


@pytest.fixture
def open_sessions(redis_client: redis.Redis) -> Iterator[OpenSessions]:
    """Opens sessions on the process backend; several at once, each from its own thread."""
    opened: list[SandboxSession] = []

    def open_(
        services: SandboxServices, n: int, backend: SandboxBackend | None = None
    ) -> list[SandboxSession]:
        backend = backend or create_backend(services.settings, "process")
        ref = put_context(redis_client, "ctx")

        def one(_: int) -> SandboxSession:
            return SandboxSession(services, backend, ref, answer_from_text)

        if n == 1:
            sessions = [one(0)]
        else:  # these sandboxes die with their threads (bubblewrap): only their start counts
            with ThreadPoolExecutor(n) as threads:
                sessions = list(threads.map(one, range(n)))
        opened.extend(sessions)
        return sessions

    yield open_
    for session in opened:
        session.close()


@pytest.mark.parametrize("limit", [1, 2])
def test_no_more_than_the_limit_of_sandboxes_start_at_once(
    settings: Settings,
    make_services: MakeServices,
    watch: StartWatch,
    open_sessions: OpenSessions,
    limit: int,
) -> None:
    limited = make_services(settings.model_copy(update={"sandbox_start_concurrency": limit}))
    sessions = open_sessions(limited, 2 * limit + 2)
    ids = [s.sandbox_id for s in sessions]
    assert eventually(lambda: set(ids) <= watch.ready(), 10)
    assert sorted(watch.started()) == sorted(ids)
    # Every slot was used (the burst was real) and never more than the limit at once.
    assert watch.most_at_once() == limit


def test_waiting_for_a_slot_does_not_count_against_the_start_timeout(
    settings: Settings,
    make_services: MakeServices,
    open_sessions: OpenSessions,
) -> None:
    timeout_s = 5.0
    limited = make_services(
        settings.model_copy(
            update={"sandbox_start_concurrency": 1, "sandbox_start_timeout_s": timeout_s}
        )
    )
    slots = limited.start_slots
    held = slots.acquire()  # as if another start were taking its time
    outputs: list[str] = []

    def open_and_run() -> None:
        # In one thread: bubblewrap ends a sandbox when the thread that started it exits.
        (session,) = open_sessions(limited, 1)
        outputs.append(session.run_cell("print(context)", timeout_s=20, max_output_chars=99).stdout)

    opener = threading.Thread(target=open_and_run)
    opener.start()
    try:
        eventually(lambda: slots.waiting == 1, 10)
        queued_at = time.monotonic()
        # The session now waits longer than its whole start timeout before it may start.
        assert eventually(lambda: time.monotonic() - queued_at > timeout_s + 0.5, 10)
        assert not outputs
    finally:
        held.release()
    opener.join(START_S)
    assert outputs == ["ctx\n"]


def test_a_job_starts_before_pool_refills_and_a_closed_pool_stops_waiting(
    settings: Settings,
    make_services: MakeServices,
    watch: StartWatch,
    open_sessions: OpenSessions,
) -> None:
    limited = make_services(settings.model_copy(update={"sandbox_start_concurrency": 1}))
    backend = create_backend(limited.settings, "process")
    pool = SandboxPool(limited, backend, size=4)
    try:
        assert eventually(lambda: pool.started >= 1, START_S)
        refills_before = pool.started
        # The pool's backend: making another one checks bubblewrap first, and the pool
        # would start more while it does.
        (session,) = open_sessions(limited, 1, backend)
        # The job waited for at most the refill already under way (and one that got its
        # slot as the job asked), not for the three more the pool still wanted.
        position = watch.started().index(session.sandbox_id)
        assert position <= refills_before + 1
        assert pool.wait_full(START_S)
        assert watch.most_at_once() == 1
    finally:
        pool.close()
    # A pool closed while it waits for a slot gives up at once and starts nothing more.
    held = limited.start_slots.acquire()
    waiting = SandboxPool(limited, backend, size=2)
    try:
        started = time.monotonic()
        waiting.close()
        assert time.monotonic() - started < 5
        assert waiting.started == 0
    finally:
        held.release()
