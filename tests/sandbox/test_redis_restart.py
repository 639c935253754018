"""A sandbox lives through a Redis crash and restart: same process, same variables.

Redis forgets ACL users when it restarts (they are not in the AOF); the host tells it
again, the runtime logs in again and resubscribes, and a cell published while nobody
listened is sent again. The process backend binds the socket's directory, so the sandbox
sees the restarted server's new socket file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rlm_jobs.config import Settings, redis_client
from rlm_jobs.contexts import put_context
from rlm_jobs.sandboxes.pool import SandboxPool
from rlm_jobs.sandboxes.registry import create_backend
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.session import SandboxSession
from sandbox.records import SubcallResult
from sandbox.wire import SubcallRequest
from tests.support import answer_from_text, wait_for
from tests.support.faults import CrashableRedis

pytestmark = pytest.mark.timeout(120)


def run(session: SandboxSession, code: str) -> Any:
    return session.run_cell(code, timeout_s=60, max_output_chars=2000)


@pytest.fixture
def settings(crashable_redis: CrashableRedis) -> Settings:
    server = crashable_redis.server
    return Settings(
        redis_url=server.url,
        sandbox_redis_socket=server.unix_socket,
        sandbox_start_timeout_s=30,
        sandbox_memory_mb=1024,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    c = redis_client(settings)
    yield c
    c.close()


@pytest.fixture
def services(client: redis.Redis, settings: Settings) -> Iterator[SandboxServices]:
    made = SandboxServices(client, settings)
    yield made
    made.close()


@pytest.fixture
def sessions(services: SandboxServices) -> Iterator[list[SandboxSession]]:
    opened: list[SandboxSession] = []
    yield opened
    for session in opened:
        session.close()
    # Teardowns run in the background: let them finish while this test's Redis still runs.
    assert services.janitor.drain(30)


def open_session(
    services: SandboxServices, opened: list[SandboxSession], handler: Any = answer_from_text
) -> SandboxSession:
    ref = put_context(services.client, "the context")
    backend = create_backend(services.settings, "process")
    session = SandboxSession(services, backend, ref, handler)
    opened.append(session)
    return session


def test_a_sandbox_keeps_its_state_across_a_redis_restart(
    services: SandboxServices, sessions: list[SandboxSession], crashable_redis: CrashableRedis
) -> None:
    session = open_session(services, sessions)
    assert run(session, "kept = 41").error is None
    sandbox_id, process = session.sandbox_id, session.process
    assert process is not None

    crashable_redis.crash_and_restart(down_s=0.5)
    # Sent at once: the runtime cannot log in until its user is restored, so this cell is
    # published while it listens to nothing, and must be sent again.
    out = run(session, "print(kept + 1, context)")

    assert (out.stdout, out.error, out.sandbox_replaced) == ("42 the context\n", None, False)
    assert session.sandbox_id == sandbox_id and process.alive()


def test_a_cell_waiting_on_a_sub_call_during_a_restart_gets_its_answer(
    services: SandboxServices, sessions: list[SandboxSession], crashable_redis: CrashableRedis
) -> None:
    asked = threading.Event()
    release = threading.Event()

    def slow_answer(request: SubcallRequest) -> list[SubcallResult]:
        asked.set()
        release.wait(30)  # answered only once Redis is back
        return answer_from_text(request)

    session = open_session(services, sessions, slow_answer)
    result: list[Any] = []
    cell = threading.Thread(
        target=lambda: result.append(run(session, "print(llm_query('where is it'))"))
    )
    cell.start()
    assert asked.wait(30), "the sub-call never reached the host"

    crashable_redis.crash_and_restart(down_s=0.5)
    release.set()
    cell.join(60)

    (out,) = result
    assert out.stdout == "llm/default: WHERE IS IT\n"
    assert (out.error, out.sandbox_replaced) == (None, False)


def test_a_pooled_sandbox_gets_its_context_after_a_restart(
    client: redis.Redis, services: SandboxServices, crashable_redis: CrashableRedis
) -> None:
    backend = create_backend(services.settings, "process")
    pool = SandboxPool(services, backend, size=1)
    try:
        assert pool.wait_full(30)
        crashable_redis.crash_and_restart(down_s=0.5)
        # The context load is published while the runtime cannot log in yet: lost, then
        # sent again on its first heartbeat, well before sandbox_start_timeout_s (30 s).
        ref = put_context(client, "loaded after the restart")
        session = SandboxSession(services, backend, ref, answer_from_text, pool=pool)
        try:
            assert session.from_pool and session.start_duration_s < 15
            assert run(session, "print(context)").stdout == "loaded after the restart\n"
        finally:
            session.close()
    finally:
        pool.close()


def test_a_runtime_gives_up_once_redis_stays_away_past_its_retry_window(
    client: redis.Redis, settings: Settings, crashable_redis: CrashableRedis
) -> None:
    impatient = SandboxServices(client, settings.model_copy(update={"redis_retry_s": 1.0}))
    opened: list[SandboxSession] = []
    try:
        session = open_session(impatient, opened)
        process = session.process
        assert process is not None
        crashable_redis.crash()
        wait_for(lambda: not process.alive(), 20, "the runtime to give up")
        crashable_redis.restart()
    finally:
        for session in opened:
            session.close()
        assert impatient.janitor.drain(30)
        impatient.close()
