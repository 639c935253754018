"""The warm sandbox pool, fast close and the stale ACL user sweep, on every backend."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from rlm_jobs import keys
from rlm_jobs.config import Settings
from rlm_jobs.contexts import put_context
from rlm_jobs.sandboxes import acl
from rlm_jobs.sandboxes.identities import Identities
from rlm_jobs.sandboxes.pool import SandboxPool
from rlm_jobs.sandboxes.registry import create_backend
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.session import SandboxSession
from tests.support import answer_from_text, eventually

START_S = 60.0


def run(session: SandboxSession, code: str) -> Any:
    return session.run_cell(code, timeout_s=20, max_output_chars=5000)


def sandbox_users(client: redis.Redis) -> set[str]:
    return {str(u) for u in client.acl_users() if str(u).startswith(keys.SANDBOX_USER_PREFIX)}


@pytest.fixture
def make_pool(
    services: SandboxServices, settings: Settings, backend_name: str
) -> Iterator[Callable[..., SandboxPool]]:
    backend = create_backend(settings, backend_name)
    pools: list[SandboxPool] = []

    def make(size: int = 2, **kw: Any) -> SandboxPool:
        pool = SandboxPool(services, backend, size=size, **kw)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()
    services.janitor.drain(30)


@pytest.fixture
def open_pooled(
    redis_client: redis.Redis, services: SandboxServices
) -> Iterator[Callable[..., SandboxSession]]:
    sessions: list[SandboxSession] = []

    def open_(pool: SandboxPool, context: Any) -> SandboxSession:
        ref = put_context(redis_client, context)
        session = SandboxSession(services, pool.backend, ref, answer_from_text, pool=pool)
        sessions.append(session)
        return session

    yield open_
    for session in sessions:
        session.close()
    services.janitor.drain(30)


def test_a_pooled_sandbox_serves_its_job_with_context_and_persistence(
    make_pool: Callable[..., SandboxPool], open_pooled: Callable[..., SandboxSession]
) -> None:
    pool = make_pool()
    assert pool.wait_full(START_S)
    session = open_pooled(pool, ["a", "b"])
    assert session.from_pool
    assert run(session, "x = len(context)").error is None
    out = run(session, "print(context, x, llm_query('q'))")
    assert out.stdout == "['a', 'b'] 2 llm/default: Q\n"


def test_two_jobs_never_share_a_sandbox_or_variables(
    make_pool: Callable[..., SandboxPool], open_pooled: Callable[..., SandboxSession]
) -> None:
    pool = make_pool()
    assert pool.wait_full(START_S)
    first = open_pooled(pool, "first")
    run(first, "secret = 'from job one'")
    first_id = first.sandbox_id
    first.close()
    assert pool.wait_full(START_S)
    second = open_pooled(pool, "second")
    assert second.from_pool and second.sandbox_id != first_id
    assert first_id not in {s.id for s in pool.idle}  # never returned to the pool
    out = run(second, "print(context, 'secret' in globals())")
    assert out.stdout == "second False\n"


def test_a_pooled_sandbox_reads_only_the_context_it_was_granted(
    make_pool: Callable[..., SandboxPool],
    open_pooled: Callable[..., SandboxSession],
    redis_client: redis.Redis,
) -> None:
    pool = make_pool()
    assert pool.wait_full(START_S)
    other_key = keys.context_blob(put_context(redis_client, "another job's context").sha256)
    # Before acquisition: the idle sandbox's user can read no context at all.
    idle_user = keys.sandbox_user(pool.idle[0].id)
    refused = redis_client.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "DRYRUN", idle_user, "GET", other_key
    )
    assert "no permissions" in str(refused)
    # After: its own context only.
    session = open_pooled(pool, "mine")
    code = (
        "import gc\n"
        "from sandbox import resp\n"
        "r = next(o for o in gc.get_objects() if type(o).__name__ == 'Runtime').redis\n"
        f"try:\n    print('ALLOWED', r.get({other_key!r}))\n"
        "except resp.ReplyError as exc:\n    print('denied' if 'NOPERM' in str(exc) else exc)\n"
        "print(context)"
    )
    out = run(session, code)
    assert out.stdout == "denied\nmine\n", out


def test_the_pool_refills_and_replaces_dead_idle_sandboxes(
    make_pool: Callable[..., SandboxPool], open_pooled: Callable[..., SandboxSession]
) -> None:
    pool = make_pool()
    assert pool.wait_full(START_S)
    open_pooled(pool, "a")
    assert eventually(lambda: len(pool.idle) == 2, START_S)
    victim = pool.idle[0]
    assert victim.process is not None
    victim.process.kill()
    assert eventually(
        lambda: victim.id not in {s.id for s in pool.idle} and len(pool.idle) == 2, START_S
    )
    assert pool.started == 4  # two, one refill after the take, one for the dead one


def test_an_empty_pool_still_opens_sessions(
    make_pool: Callable[..., SandboxPool], open_pooled: Callable[..., SandboxSession]
) -> None:
    pool = make_pool(size=0)
    session = open_pooled(pool, "on demand")
    assert not session.from_pool
    assert run(session, "print(context)").stdout == "on demand\n"


def test_idle_sandboxes_past_their_age_are_replaced(
    make_pool: Callable[..., SandboxPool],
) -> None:
    pool = make_pool(size=1, max_idle_s=1.0)
    assert pool.wait_full(START_S)
    first = pool.idle[0].id
    assert eventually(lambda: bool(pool.idle) and pool.idle[0].id != first, START_S)


def test_closing_the_pool_leaves_no_sandbox_or_user(
    make_pool: Callable[..., SandboxPool], redis_client: redis.Redis
) -> None:
    pool = make_pool()
    assert pool.wait_full(START_S)
    processes = [s.process for s in pool.idle]
    pool.close()
    # Synchronous: nothing is left the moment close() returns.
    assert all(p is not None and not p.alive() for p in processes)
    assert sandbox_users(redis_client) == set()
    assert not list(redis_client.scan_iter(match=f"{keys.PREFIX}:sbx*"))


def test_close_is_fast_and_the_teardown_completes(
    make_pool: Callable[..., SandboxPool],
    open_pooled: Callable[..., SandboxSession],
    redis_client: redis.Redis,
) -> None:
    pool = make_pool(size=1)
    assert pool.wait_full(START_S)
    session = open_pooled(pool, "ctx")
    run(session, "print(1)")
    process, sandbox_id = session.process, session.sandbox_id or ""
    started = time.perf_counter()
    session.close()
    assert time.perf_counter() - started < 0.05
    assert process is not None
    assert eventually(lambda: not process.alive(), 30)
    user = keys.sandbox_user(sandbox_id)
    assert eventually(lambda: user not in sandbox_users(redis_client), 30)
    assert eventually(
        lambda: not list(redis_client.scan_iter(match=keys.sandbox_prefix(sandbox_id) + "*")), 30
    )
    assert redis_client.get(keys.sandbox_alive(sandbox_id)) is None


def test_stale_sandbox_users_are_swept(
    make_pool: Callable[..., SandboxPool], redis_client: redis.Redis
) -> None:
    # A user left by a dead orchestrator: no liveness key. One of a live one: has it.
    # Both were made by other processes, whose identities this pool does not know.
    others = Identities(redis_client)
    acl.create_user(redis_client, others, "deadbeef", None)
    redis_client.set(keys.sandbox_alive("livebeef"), "1", ex=60)
    acl.create_user(redis_client, others, "livebeef", None)
    others.close()
    # Keys hostile code wrote without a TTL go with a dead sandbox's user, not a live one's.
    redis_client.set(keys.sandbox_prefix("deadbeef") + "hoard", "x")
    redis_client.set(keys.sandbox_prefix("livebeef") + "msg", "x")
    pool = make_pool(size=1)
    assert pool.wait_full(START_S)
    users = sandbox_users(redis_client)
    assert keys.sandbox_user("deadbeef") not in users
    assert keys.sandbox_user("livebeef") in users
    assert keys.sandbox_user(pool.idle[0].id) in users
    assert not redis_client.exists(keys.sandbox_prefix("deadbeef") + "hoard")
    assert redis_client.exists(keys.sandbox_prefix("livebeef") + "msg")


class _RefusedLogin:
    """A real backend whose runtimes cannot log in (a wrong password, no retrying): each
    exits before it is ready, as a stale sandbox image's do."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.name = inner.name
        self.launches: list[float] = []

    def launch(self, bootstrap: Any) -> Any:
        self.launches.append(time.monotonic())
        return self._inner.launch(bootstrap.replace(password="wrong", reconnect_s=0))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_sandboxes_that_exit_before_ready_are_restarted_with_a_growing_pause(
    services: SandboxServices, settings: Settings, backend_name: str
) -> None:
    backend = _RefusedLogin(create_backend(settings, backend_name))
    pool = SandboxPool(services, backend, size=1)  # type: ignore[arg-type]
    try:
        assert eventually(lambda: len(backend.launches) >= 4, START_S)
        assert not pool.idle  # before close(), which empties it anyway
    finally:
        pool.close()
        services.janitor.drain(30)
    # The pauses between starts double (0.5 s, 1 s, 2 s, plus the start itself), where
    # they used to be one status poll: a stale image flooded the log and the host
    gaps = [b - a for a, b in zip(backend.launches, backend.launches[1:], strict=False)]
    assert gaps[1] >= 1.0 and gaps[2] >= 2.0, gaps
    assert gaps[2] > gaps[0], gaps
