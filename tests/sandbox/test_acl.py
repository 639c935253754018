"""The per-sandbox Redis ACL user: only its own channels and keys, its context read-only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rlm_jobs import keys
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.sandboxes import acl
from rlm_jobs.sandboxes.services import SandboxServices
from tests.support import OpenSession

CONTEXT_KEY = keys.context_blob("c" * 64)


def run_command(client: redis.Redis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def open_pubsub(client: redis.Redis) -> Any:
    return client.pubsub()  # type: ignore[no-untyped-call]


@pytest.fixture
def sandbox_client(
    redis_client: redis.Redis, redis_server: RedisServer, services: SandboxServices
) -> Iterator[redis.Redis]:
    """A connection with the credentials a sandbox called 'a' would get."""
    redis_client.set(CONTEXT_KEY, '"the context"')
    redis_client.set("rlm:job:someone-else", "secret record")
    password = acl.create_user(redis_client, services.identities, "a", CONTEXT_KEY)
    client = redis.Redis(
        unix_socket_path=redis_server.unix_socket,
        username=keys.sandbox_user("a"),
        password=password,
        decode_responses=True,
        driver_info=None,
    )
    yield client
    client.close()


def test_a_sandbox_user_may_use_its_own_channels_and_read_its_keys(
    sandbox_client: redis.Redis, redis_client: redis.Redis
) -> None:
    own_key = keys.sandbox_message("a", "m1")
    redis_client.set(own_key, "x", ex=60)  # the host is the only writer
    assert sandbox_client.get(own_key) == "x"
    assert sandbox_client.get(CONTEXT_KEY) == '"the context"'
    sandbox_client.publish(keys.sandbox_to_host("a"), "hello")
    pubsub = open_pubsub(sandbox_client)
    pubsub.subscribe(keys.sandbox_to_sandbox("a"))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    pubsub.close()


@pytest.mark.parametrize(
    "command",
    [
        ("GET", "rlm:job:someone-else"),
        ("GET", keys.sandbox_message("b", "m1")),
        ("SET", CONTEXT_KEY, "overwritten"),  # the context is read-only
        ("SET", keys.sandbox_message("a", "m1"), "x"),  # so are its own keys (gap 1)
        ("SET", keys.sandbox_message("a", "m1"), "x", "EX", "60"),
        ("APPEND", keys.sandbox_message("a", "m1"), "x"),
        ("SETRANGE", keys.sandbox_message("a", "m1"), "0", "x"),
        ("RPUSH", keys.sandbox_prefix("a") + "list", "x"),
        ("HSET", keys.sandbox_prefix("a") + "hash", "f", "x"),
        ("SET", "rlm:job:someone-else", "x"),
        ("PUBLISH", keys.sandbox_to_host("b"), "spoof"),
        ("PUBLISH", "rlm:other", "x"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("CONFIG", "GET", "*"),
        ("FLUSHALL",),
        ("ACL", "LIST"),
        ("ACL", "SETUSER", "default", "off"),
        ("DEL", keys.sandbox_message("a", "m1")),
        ("EVAL", "return 1", "0"),
        ("CLIENT", "LIST"),
        ("SHUTDOWN",),
    ],
)
def test_a_sandbox_user_is_refused_everything_else(
    sandbox_client: redis.Redis, redis_client: redis.Redis, command: tuple[str, ...]
) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        run_command(sandbox_client, *command)
    assert redis_client.get("rlm:job:someone-else") == "secret record"
    assert redis_client.get(CONTEXT_KEY) == '"the context"'


def test_the_sandbox_commands_include_no_write_command(redis_client: redis.Redis) -> None:
    # Redis's own word on what writes: the @write category and each command's flags.
    writers = {str(c).lower() for c in run_command(redis_client, "ACL", "CAT", "write")}
    assert "set" in writers  # the question is asked right
    assert not set(acl.SANDBOX_COMMANDS) & writers, acl.SANDBOX_COMMANDS
    infos = run_command(redis_client, "COMMAND", "INFO", *acl.SANDBOX_COMMANDS)
    assert set(infos) == set(acl.SANDBOX_COMMANDS)
    for command, info in infos.items():
        flags = {str(f) for f in info["flags"]}
        assert not flags & {"write", "denyoom", "admin"}, (command, flags)


def test_a_sandbox_user_has_exactly_the_sandbox_commands(
    sandbox_client: redis.Redis, redis_client: redis.Redis
) -> None:
    user = redis_client.acl_getuser(keys.sandbox_user("a"))
    assert user["categories"] == ["-@all"]
    assert sorted(user["commands"]) == sorted(f"+{c}" for c in acl.SANDBOX_COMMANDS)
    # Its own keys and its context, as read-only patterns; its own channels.
    assert sorted(user["keys"]) == sorted([f"%R~{keys.sandbox_prefix('a')}*", f"%R~{CONTEXT_KEY}"])
    assert user["channels"] == [f"&{keys.sandbox_prefix('a')}*"]


def test_a_sandbox_user_cannot_subscribe_to_another_sandbox(sandbox_client: redis.Redis) -> None:
    pubsub = open_pubsub(sandbox_client)
    with pytest.raises(redis.exceptions.NoPermissionError):
        pubsub.subscribe(keys.sandbox_to_sandbox("b"))
        pubsub.get_message(timeout=5)
    pubsub.close()


def test_the_runtime_needs_no_command_outside_its_acl(
    open_session: OpenSession, redis_client: redis.Redis, services: SandboxServices
) -> None:
    run_command(redis_client, "ACL", "LOG", "RESET")
    session = open_session()
    out = session.run_cell("print(llm_query('q'))\nFINAL('x')", timeout_s=20, max_output_chars=1000)
    assert out.final == "x"
    session.close()
    services.janitor.drain(30)
    denied = run_command(redis_client, "ACL", "LOG")
    assert denied == [], denied


STEAL_CREDENTIALS = """
import gc
from sandbox import resp
r = next(o for o in gc.get_objects() if type(o).__name__ == "Runtime").redis
attempts = {
    "get other key": lambda: r.get("rlm:job:someone-else"),
    "overwrite context": lambda: r.call("SET", CONTEXT, "x"),
    "publish elsewhere": lambda: r.publish("rlm:sbx:other:in", "x"),
    "keys": lambda: r.call("KEYS", "*"),
    "config": lambda: r.call("CONFIG", "GET", "*"),
    "flushall": lambda: r.call("FLUSHALL"),
    "acl": lambda: r.call("ACL", "LIST"),
}
for name, attempt in attempts.items():
    try:
        print(name, "ALLOWED", attempt())
    except resp.ReplyError as exc:
        print(name, "denied" if str(exc).startswith("NOPERM") else f"error {exc}")
"""


def test_model_code_holding_the_runtime_credentials_is_still_confined(
    open_session: OpenSession, redis_client: redis.Redis
) -> None:
    session = open_session("ctx")
    redis_client.set("rlm:job:someone-else", "secret record")
    context_key = next(iter(redis_client.scan_iter(match="rlm:ctx:*")))
    code = f"CONTEXT = {context_key!r}\n" + STEAL_CREDENTIALS
    out = session.run_cell(code, timeout_s=20, max_output_chars=5000)
    assert out.error is None, out.error
    assert "ALLOWED" not in out.stdout
    assert out.stdout.count("denied") == 7
    assert redis_client.get("rlm:job:someone-else") == "secret record"


def test_the_socket_gives_nothing_away_without_the_sandbox_credentials(
    open_session: OpenSession, redis_client: redis.Redis
) -> None:
    # Holds only because the server's default user has a password (see acl.py).
    assert not acl.default_user_is_open(redis_client)
    redis_client.set("rlm:job:someone-else", "secret record")
    code = (
        "import gc\n"
        "from sandbox import resp\n"
        "runtime = next(o for o in gc.get_objects() if type(o).__name__ == 'Runtime')\n"
        "anon = resp.Connection(unix_socket=runtime.boot.redis_unix_socket)\n"
        "try:\n"
        "    print('ALLOWED', anon.get('rlm:job:someone-else'))\n"
        "except resp.ReplyError as exc:\n"
        "    print('refused:', exc)\n"
    )
    out = open_session().run_cell(code, timeout_s=20, max_output_chars=2000)
    assert out.error is None, out.error
    assert "ALLOWED" not in out.stdout and "refused: NOAUTH" in out.stdout
