"""The sandbox's own Redis client against a real redis-server."""

from __future__ import annotations

import signal
import sys
import threading

import pytest
import redis

from rlm_jobs.redis_server import RedisServer
from sandbox import resp
from sandbox.repl import Repl


def connect(server: RedisServer, **overrides: object) -> resp.Connection:
    options: dict[str, object] = {"unix_socket": server.unix_socket, "password": server.password}
    options.update(overrides)
    return resp.Connection(**options)  # type: ignore[arg-type]


def test_commands_replies_and_errors(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    conn = connect(redis_server)
    assert conn.call("SET", "k", "välue", "EX", 60) == b"OK"
    assert conn.get("k") == "välue".encode()
    assert 0 < redis_client.ttl("k") <= 60
    assert conn.get("missing") is None
    assert conn.call("RPUSH", "l", "a", b"b", 3) == 3
    assert conn.call("LRANGE", "l", 0, -1) == [b"a", b"b", b"3"]
    assert conn.call("HGETALL", "missing") == []
    with pytest.raises(resp.ReplyError, match="WRONGTYPE"):
        conn.call("GET", "l")
    # An error reply leaves the connection usable.
    assert conn.call("PING") == b"PONG"
    conn.close()


def test_pipeline_is_one_round_trip_in_order(redis_server: RedisServer) -> None:
    conn = connect(redis_server)
    pipe = conn.pipeline()
    pipe.execute_command("SET", "a", "1")
    pipe.execute_command("INCR", "a")
    pipe.execute_command("GET", "a")
    assert pipe.execute() == [b"OK", 2, b"2"]
    failing = conn.pipeline()
    failing.execute_command("SET", "b", "x")
    failing.execute_command("INCR", "b")
    with pytest.raises(resp.ReplyError, match="not an integer"):
        failing.execute()
    assert conn.get("b") == b"x"  # the commands before the failure ran
    conn.close()


def test_large_values_are_read_whole(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    blob = bytes(range(256)) * (12 * 4096)  # 12 MiB, every byte value, CRLFs inside
    redis.Redis.from_url(redis_server.url).set("big", blob)
    conn = connect(redis_server)
    assert conn.get("big") == blob
    assert conn.call("PING") == b"PONG"  # the stream is still in step
    conn.close()


def test_pubsub_with_timeouts_loses_nothing(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    sub = connect(redis_server)
    sub.subscribe("chan")
    assert sub.read_push(timeout_s=0.05) is None
    payloads = [b"x" * n for n in (0, 1, 70_000, 3)]
    for payload in payloads:
        redis_client.publish("chan", payload)
    received = []
    while len(received) < len(payloads):
        push = sub.read_push(timeout_s=5)
        assert push is not None
        assert push[:2] == [b"message", b"chan"]
        received.append(push[2])
    assert received == payloads
    sub.close()


def test_threads_share_one_connection(redis_server: RedisServer) -> None:
    conn = connect(redis_server)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(200):
                key = f"t{n}:{i}"
                conn.call("SET", key, key)
                assert conn.get(key) == key.encode()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    conn.close()


def test_auth_failures_and_a_lost_server(redis_server: RedisServer) -> None:
    with pytest.raises(resp.AuthFailed, match="WRONGPASS"):
        connect(redis_server, password="wrong")
    anonymous = connect(redis_server, password=None)
    with pytest.raises(resp.ReplyError, match="NOAUTH"):
        anonymous.get("k")
    anonymous.close()
    with pytest.raises(resp.ConnectionLost, match="cannot connect"):
        resp.Connection(unix_socket=redis_server.unix_socket + ".missing")
    conn = connect(redis_server)
    sub = connect(redis_server)
    sub.subscribe("chan")
    killer = redis.Redis.from_url(redis_server.url)
    killer.client_kill_filter(skipme=True, _type="normal")
    killer.client_kill_filter(skipme=True, _type="pubsub")
    with pytest.raises(resp.ConnectionLost):
        conn.get("k")
    # The next command opens a new connection (and authenticates again).
    assert conn.call("PING") == b"PONG"
    # A subscribed connection cannot come back: its subscription is gone.
    with pytest.raises(resp.ConnectionLost):
        sub.read_push(timeout_s=5)
    with pytest.raises(resp.ConnectionLost, match="unusable"):
        sub.read_push(timeout_s=0.1)
    conn.close()
    with pytest.raises(resp.ConnectionLost, match="unusable"):  # closed for good
        conn.get("k")
    sub.close()
    killer.close()


def test_the_cell_timer_waits_for_a_request_to_finish(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    blob = b"x" * (128 << 20)  # long enough to read that the first timer tick lands inside
    redis.Redis.from_url(redis_server.url).set("big", blob)
    conn = connect(redis_server)
    client_id = conn.call("CLIENT", "ID")
    streams, alarm = (sys.stdout, sys.stderr), signal.getsignal(signal.SIGALRM)
    try:  # a Repl takes over the process's stdout, stderr and SIGALRM, as in a sandbox
        repl = Repl(
            None, {"fetch": lambda: len(conn.get("big") or b"")}, busy=resp.main_thread_in_request
        )
        code = "size = fetch()\nwhile True:\n    pass"
        run = repl.run(code, timeout_s=0.01, max_output_chars=1000)
    finally:
        sys.stdout, sys.stderr = streams
        signal.signal(signal.SIGALRM, alarm)
    # The timeout came, but only after the reply was read whole: the connection is in step.
    assert run.timed_out
    assert repl.namespace["size"] == len(blob)
    assert conn.call("CLIENT", "ID") == client_id
    conn.close()
