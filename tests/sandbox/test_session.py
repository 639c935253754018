"""Host-side session behaviour every backend shares: deaths, cleanup, bad messages, big contexts."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from rlm_jobs import keys
from rlm_jobs.config import Settings
from rlm_jobs.contexts import put_context
from rlm_jobs.errors import SandboxError
from rlm_jobs.models import ContextRef
from rlm_jobs.sandboxes import acl
from rlm_jobs.sandboxes.registry import create_backend
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.session import SandboxSession, open_repl_factory
from sandbox import wire
from tests.support import MakeServices, OpenSession, answer_from_text, eventually


def run(session: Any, code: str, timeout_s: float = 20.0) -> Any:
    return session.run_cell(code, timeout_s=timeout_s, max_output_chars=2000)


def sandbox_leftovers(client: redis.Redis) -> tuple[list[str], list[Any]]:
    users = [str(u) for u in client.acl_users() if u != "default"]
    return users, list(client.scan_iter(match=f"{keys.PREFIX}:sbx:*"))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import os\nos._exit(3)", "exited with code 3"),
        ("import os\nos.kill(os.getpid(), 9)", "SIGKILL"),
    ],
    ids=["os-exit", "sigkill"],
)
def test_a_sandbox_that_dies_mid_cell_is_replaced(
    open_session: OpenSession, code: str, expected: str
) -> None:
    session = open_session("ctx")
    run(session, "kept = 1")
    old_process, old_id = session.process, session.sandbox_id
    out = run(session, code)
    assert out.sandbox_replaced and not out.timed_out
    assert out.error is not None and "died" in out.error and expected in out.error
    assert "gone" in out.note
    assert old_process is not None and not old_process.alive()
    assert session.sandbox_id != old_id
    assert run(session, "print(context)").stdout == "ctx\n"


def test_replacing_a_sandbox_removes_the_old_user_and_keys(
    open_session: OpenSession, redis_client: redis.Redis
) -> None:
    session = open_session()
    old_id = session.sandbox_id
    assert old_id is not None
    run(session, "import os\nos._exit(1)")
    users, leftover = sandbox_leftovers(redis_client)
    assert users == [keys.sandbox_user(session.sandbox_id or "")]
    assert not [k for k in leftover if old_id in k]


def test_close_after_an_exception_leaves_nothing_behind(
    open_session: OpenSession, redis_client: redis.Redis
) -> None:
    session = open_session()
    process = session.process
    with pytest.raises(RuntimeError), session:
        run(session, "print(llm_query('x'))")
        raise RuntimeError("the loop failed")
    # Teardown runs in the background after close().
    assert process is not None and eventually(lambda: not process.alive())
    assert eventually(lambda: sandbox_leftovers(redis_client) == ([], []))
    session.close()  # twice is fine
    with pytest.raises(SandboxError):
        run(session, "1")


def test_non_json_and_schema_violating_input_is_reported_without_hanging(
    open_session: OpenSession, redis_client: redis.Redis
) -> None:
    session = open_session()
    sandbox_id = session.sandbox_id or ""
    channel_in = keys.sandbox_to_sandbox(sandbox_id)
    watcher = redis_client.pubsub()  # type: ignore[no-untyped-call]
    watcher.subscribe(keys.sandbox_to_host(sandbox_id))
    redis_client.publish(channel_in, "this is not json")
    redis_client.publish(channel_in, json.dumps({"type": "exec", "seq": 0, "id": "bad-exec"}))
    redis_client.publish(channel_in, json.dumps({"type": "nonsense", "seq": 0, "id": "n"}))
    # The malformed exec is answered with an error, so a waiter would not hang.
    replies: list[wire.CellDone] = []

    def answered() -> bool:
        msg = watcher.get_message(timeout=0.1)
        if msg is not None and msg["type"] == "message":
            decoded = wire.decode_to_host(msg["data"])
            if isinstance(decoded, wire.CellDone) and decoded.reply_to == "bad-exec":
                replies.append(decoded)
        return bool(replies)

    assert eventually(answered)
    watcher.close()
    assert replies[0].result.error is not None
    assert "malformed exec message" in replies[0].result.error
    out = run(session, "print('still serving')")
    assert out.stdout == "still serving\n"
    assert "ignored malformed messages" in out.stderr and "not JSON" in out.stderr


def test_garbage_from_the_sandbox_side_is_noted_and_ignored(
    open_session: OpenSession, redis_client: redis.Redis
) -> None:
    session = open_session()
    channel_out = keys.sandbox_to_host(session.sandbox_id or "")
    redis_client.publish(channel_out, "{broken")
    redis_client.publish(channel_out, json.dumps({"type": "cell_result", "seq": 1}))
    out = run(session, "print('ok')")
    assert out.stdout == "ok\n"
    assert out.note.count("malformed message from the sandbox") == 2


def test_a_50_mb_context_loads(open_session: OpenSession) -> None:
    big = "0123456789" * 5_000_000
    started = time.monotonic()
    session = open_session(big)
    opened_s = time.monotonic() - started
    out = run(session, "print(len(context), context[-3:])")
    assert out.stdout == "50000000 789\n"
    print(f"50 MB context: session ready in {opened_s:.2f} s")
    assert opened_s < 15


def test_a_missing_context_fails_the_start_clearly(
    redis_client: redis.Redis, services: SandboxServices, settings: Settings, backend_name: str
) -> None:
    ref = ContextRef(sha256="0" * 64, kind="str", length=1, total_chars=1)
    backend = create_backend(settings, backend_name)
    with pytest.raises(SandboxError, match="could not load the context"):
        SandboxSession(services, backend, ref, answer_from_text)
    # Teardown runs in the background (janitor): wait for it rather than race it.
    assert eventually(lambda: sandbox_leftovers(redis_client) == ([], []))


def test_open_repl_factory_opens_working_sessions(
    redis_client: redis.Redis, make_services: MakeServices, settings: Settings, backend_name: str
) -> None:
    from rlm_jobs.contexts import put_context

    settings = settings.model_copy(update={"sandbox_backend": backend_name})
    factory = open_repl_factory(make_services(settings))
    repl = factory(put_context(redis_client, ["a", "b"]), answer_from_text)
    try:
        out = repl.run_cell("print(context, llm_query('q'))", timeout_s=10, max_output_chars=500)
        assert out.stdout == "['a', 'b'] llm/default: Q\n"
    finally:
        repl.close()
    assert eventually(lambda: sandbox_leftovers(redis_client) == ([], []))


def test_the_runtime_exits_when_it_loses_redis(
    redis_client: redis.Redis, settings: Settings, make_services: MakeServices, backend_name: str
) -> None:
    # It tries to get back in for redis_retry_s (a Redis restart), then gives up.
    quick = settings.model_copy(update={"redis_retry_s": 2.0})
    ref = put_context(redis_client, "ctx")
    services = make_services(quick)
    session = SandboxSession(services, create_backend(quick, backend_name), ref, answer_from_text)
    process = session.process
    assert process is not None
    # Deleting its user disconnects the runtime and makes every reconnect fail.
    acl.delete_user(redis_client, services.identities, session.sandbox_id or "")
    assert eventually(lambda: not process.alive(), timeout_s=20)
    session.close()


def test_concurrent_sessions_share_one_pubsub_connection(
    open_session: OpenSession, redis_client: redis.Redis, services: SandboxServices
) -> None:
    with ThreadPoolExecutor(6) as pool:
        sessions = list(pool.map(lambda i: open_session(f"context {i}"), range(6)))
        outs = list(pool.map(lambda s: run(s, "print(context, llm_query('x'))"), sessions))
    assert [o.stdout for o in outs] == [f"context {i} llm/default: X\n" for i in range(6)]
    assert services.hub.subscriptions == 6
    listeners = [
        c for c in redis_client.client_list() if c["user"] == "default" and int(c["sub"]) > 0
    ]
    assert len(listeners) == 1
    for session in sessions:
        session.close()
    # Teardown (which unsubscribes) runs in the background after close().
    assert eventually(lambda: services.hub.subscriptions == 0)


def test_a_dropped_hub_connection_is_survived(
    open_session: OpenSession, redis_client: redis.Redis
) -> None:
    session = open_session()
    assert run(session, "x = 1").error is None
    kill = ("CLIENT", "KILL", "TYPE", "pubsub", "USER", "default")
    killed = redis_client.execute_command(*kill)  # type: ignore[no-untyped-call]
    assert killed == 1
    out = run(session, "print(x, llm_query('after'))")
    assert out.stdout == "1 llm/default: AFTER\n"


def test_closing_the_services_ends_their_teardowns_and_threads(
    redis_client: redis.Redis, settings: Settings
) -> None:
    before = set(threading.enumerate())
    services = SandboxServices(redis_client, settings)
    ref = put_context(redis_client, "ctx")
    session = SandboxSession(services, create_backend(settings, "process"), ref, answer_from_text)
    assert run(session, "print(context)").stdout == "ctx\n"
    session.close()  # its teardown is queued on the janitor
    started = {t for t in threading.enumerate() if t.name.startswith("rlm-")} - before
    assert {t.name for t in started} >= {"rlm-pubsub-hub", "rlm-teardown", "rlm-sandbox-alive"}
    services.close()
    # The queued teardown finished first, then every thread the services started ended.
    assert sandbox_leftovers(redis_client) == ([], [])
    assert not [t.name for t in started if t.is_alive() and t.name != "rlm-sandbox-output"]
    with pytest.raises(SandboxError, match="closed"):
        SandboxSession(services, create_backend(settings, "process"), ref, answer_from_text)
