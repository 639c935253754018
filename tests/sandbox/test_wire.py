"""The wire schema: strict checks on both sides, round trips, references to stored copies."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import redis

from sandbox import wire
from sandbox.records import CellResult, SubcallResult


def exec_cell(**overrides: Any) -> dict[str, Any]:
    data = {
        "type": "exec",
        "seq": 1,
        "id": "abc",
        "code": "print(1)",
        "timeout_s": 5,
        "max_output_chars": 1000,
    }
    return {**data, **overrides}


def decode_for_sandbox(data: Any) -> wire.ToSandbox:
    return wire.decode_to_sandbox(_NoRedis(), "p:", json.dumps(data))


class _NoRedis:
    """For messages that carry no reference: any lookup is a test failure."""

    def get(self, name: str) -> Any:
        raise AssertionError(f"unexpected GET {name}")

    def pipeline(self, transaction: bool = False) -> Any:
        raise AssertionError("unexpected pipeline")


def test_every_message_round_trips_through_json() -> None:
    to_host = [
        wire.Ready(seq=0, id="a", pid=7),
        wire.CellDone(
            seq=1,
            id="b",
            reply_to="c",
            result=CellResult(stdout="out \ud800 ü", stderr="", final="x", timed_out=True),
        ),
        wire.ContextLoaded(seq=2, id="d", reply_to="e", size_bytes=0),
        wire.SubcallRequest(seq=3, id="f", kind="rlm", prompts=["p1", "p2"], model="m"),
        wire.Heartbeat(seq=4, id="g"),
        wire.Fatal(seq=5, id="h", message="boom"),
    ]
    for msg in to_host:
        decoded = wire.decode_to_host(_NoRedis(), "p:", msg.to_json())
        if isinstance(msg, wire.CellDone):
            # A lone surrogate cannot be encoded anywhere downstream: it is replaced.
            fixed = dataclasses.replace(msg.result, stdout="out \ufffd\ufffd\ufffd ü")
            assert decoded == dataclasses.replace(msg, result=fixed)
        else:
            assert decoded == msg
    to_sandbox = [
        wire.ExecCell(seq=0, id="a", code="x = 1", timeout_s=0.5, max_output_chars=100),
        wire.SubcallReply(
            seq=1, id="b", reply_to="c", results=[SubcallResult(ok=True, text="t")] * 2
        ),
        wire.Shutdown(seq=2, id="c"),
        wire.LoadContext(seq=3, id="d", context_key="rlm:ctx:1"),
    ]
    for msg in to_sandbox:
        assert wire.decode_to_sandbox(_NoRedis(), "p:", msg.to_json()) == msg


def test_serialised_messages_are_ascii_so_lone_surrogates_survive() -> None:
    result = CellResult(stdout="\ud800", stderr="")
    body = wire.CellDone(seq=1, id="b", reply_to="c", result=result).to_json()
    assert body.isascii()
    body.encode()  # would raise for an unescaped surrogate


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (exec_cell(extra=1), "unexpected field 'extra'"),
        (exec_cell(code=None), "code: expected a string, got null"),
        (exec_cell(seq=True), "seq: expected an integer, got bool"),
        (exec_cell(seq=-1), "seq: must be >= 0"),
        (exec_cell(id=""), "id: must have at least 1"),
        (exec_cell(id="x" * 65), "id: must have at most 64"),
        (exec_cell(timeout_s=0), "timeout_s: must be > 0"),
        (exec_cell(timeout_s="5"), "timeout_s: expected a number, got str"),
        (exec_cell(max_output_chars=99), "max_output_chars: must be >= 100"),
        (exec_cell(max_output_chars=100.5), "max_output_chars: expected an integer, got float"),
        ({k: v for k, v in exec_cell().items() if k != "code"}, "code"),
        (exec_cell(type="nope"), "unknown type 'nope'"),
        ({"seq": 1, "id": "a"}, "unknown type None"),
        ([1, 2], "not a JSON object"),
        (
            {"type": "subcall_reply", "seq": 1, "id": "a", "reply_to": "b", "results": [{}]},
            "SubcallResult",
        ),
        (
            {"type": "subcall_reply", "seq": 1, "id": "a", "reply_to": "b", "results": [1]},
            "must be a JSON object",
        ),
        ({"type": "load_context", "seq": 1, "id": "a", "context_key": ""}, "context_key"),
        ({"type": "ready", "seq": 1, "id": "a", "pid": 1}, "unknown type 'ready'"),
    ],
)
def test_malformed_messages_are_rejected_with_a_readable_reason(data: Any, problem: str) -> None:
    with pytest.raises(wire.WireError) as raised:
        decode_for_sandbox(data)
    assert problem in str(raised.value)


def test_host_side_checks_are_as_strict() -> None:
    bad = [
        {"type": "subcall_request", "seq": 1, "id": "a", "kind": "llm", "prompts": []},
        {"type": "subcall_request", "seq": 1, "id": "a", "kind": "sql", "prompts": ["p"]},
        {"type": "subcall_request", "seq": 1, "id": "a", "kind": "llm", "prompts": [1]},
        {"type": "cell_result", "seq": 1, "id": "a", "reply_to": "b",
         "result": {"stdout": "", "stderr": "", "duration_s": float("nan")}},
        {"type": "exec", "seq": 1, "id": "a", "code": "", "timeout_s": 1, "max_output_chars": 100},
    ]  # fmt: skip
    for data in bad:
        with pytest.raises(wire.WireError):
            wire.decode_to_host(_NoRedis(), "p:", json.dumps(data))
    huge = {"type": "cell_result", "seq": 1, "id": "a", "reply_to": "b",
            "result": {"stdout": "", "stderr": "", "duration_s": 10**400}}  # fmt: skip
    with pytest.raises(wire.WireError, match="finite number"):
        wire.decode_to_host(_NoRedis(), "p:", json.dumps(huge))
    with pytest.raises(wire.WireError) as raised:
        wire.decode_to_host(_NoRedis(), "p:", json.dumps({"type": "x" * 100_000}))
    assert len(str(raised.value)) < 200  # what a sandbox sends is never echoed in full
    for raw in ("not json", "[" * 100_000, "1" * 5000):
        with pytest.raises(wire.WireError):
            wire.decode_to_host(_NoRedis(), "p:", raw)


def test_messages_are_checked_when_built_too() -> None:
    with pytest.raises(wire.WireError, match="timeout_s"):
        wire.ExecCell(seq=1, id="a", code="", timeout_s=-1, max_output_chars=100)
    with pytest.raises(wire.WireError, match="results"):
        wire.SubcallReply(seq=1, id="a", reply_to="b", results=["text"])  # type: ignore[list-item]


def test_bootstrap_round_trips_and_rejects_unknown_fields() -> None:
    boot = wire.Bootstrap(
        sandbox_id="s", channel_in="i", channel_out="o", message_key_prefix="p:", password="pw"
    )
    assert wire.Bootstrap.from_json(boot.to_json()) == boot
    with pytest.raises(wire.WireError, match="unexpected field"):
        wire.Bootstrap.from_json(json.dumps({**json.loads(boot.to_json()), "evil": 1}))
    with pytest.raises(wire.WireError, match="heartbeat_s"):
        wire.Bootstrap.from_json(json.dumps({**json.loads(boot.to_json()), "heartbeat_s": 0}))


def test_large_messages_travel_by_reference_in_one_pipeline(redis_client: redis.Redis) -> None:
    sub = redis_client.pubsub()
    sub.subscribe("chan")
    assert sub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    result = CellResult(stdout="x" * 100_000, stderr="")
    big = wire.CellDone(seq=1, id="big", reply_to="req", result=result)
    small = wire.Heartbeat(seq=2, id="small")
    wire.send(redis_client, "chan", "p:", big)
    wire.send(redis_client, "chan", "p:", small)
    received = []
    while len(received) < 2:
        msg = sub.get_message(timeout=5)
        assert msg is not None
        received.append(msg["data"])
    assert json.loads(received[0]) == {"ref": "big"}
    assert wire.decode_to_host(redis_client, "p:", received[0]) == big
    assert wire.decode_to_host(redis_client, "p:", received[1]) == small
    assert wire.fetch_reply_to_host(redis_client, "p:", "req") == big
    assert 0 < redis_client.ttl("p:big") <= wire.MESSAGE_TTL_S
    redis_client.delete("p:big")
    with pytest.raises(wire.WireError, match="expired"):
        wire.decode_to_host(redis_client, "p:", received[0])
    sub.close()
