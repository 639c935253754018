"""The wire: strict checks on both sides, round trips, parts, references to stored copies."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from sandbox import wire
from sandbox.records import CellResult, SubcallResult, ToolSpec


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
        wire.ToolRequest(seq=6, id="i", name="fx_rate", arguments='{"args":["EUR"],"kwargs":{}}'),
    ]
    for msg in to_host:
        decoded = wire.decode_to_host(msg.to_json())
        if isinstance(msg, wire.CellDone):
            # A lone surrogate cannot be encoded anywhere downstream: it is replaced.
            fixed = msg.result.replace(stdout="out \ufffd\ufffd\ufffd ü")
            assert decoded == msg.replace(result=fixed)
        else:
            assert decoded == msg
    to_sandbox = [
        wire.ExecCell(seq=0, id="a", code="x = 1", timeout_s=0.5, max_output_chars=100),
        wire.SubcallReply(
            seq=1, id="b", reply_to="c", results=[SubcallResult(ok=True, text="t")] * 2
        ),
        wire.Shutdown(seq=2, id="c"),
        wire.LoadContext(seq=3, id="d", context_key="rlm:ctx:1", seed=2**63 - 1),
        wire.LoadContext(
            seq=5,
            id="g",
            context_key="rlm:ctx:2",
            seed=1,
            context_index=3,
            tools=[ToolSpec(name="fx_rate", signature="(currency: str) -> float", doc="Rate.")],
        ),
        wire.Ack(seq=4, id="e", reply_to="f"),
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
        (
            {"type": "load_context", "seq": 1, "id": "a", "context_key": "", "seed": 0},
            "context_key",
        ),
        ({"type": "load_context", "seq": 1, "id": "a", "context_key": "k"}, "seed"),
        ({"type": "load_context", "seq": 1, "id": "a", "context_key": "k", "seed": -1}, "seed"),
        ({"type": "load_context", "seq": 1, "id": "a", "context_key": "k", "seed": 2**63}, "seed"),
        ({"type": "ready", "seq": 1, "id": "a", "pid": 1}, "unknown type 'ready'"),
        (
            {"type": "load_context", "seq": 1, "id": "a", "context_key": "k", "seed": 0,
             "context_index": -1},
            "context_index: must be >= 0",
        ),
        (
            {"type": "load_context", "seq": 1, "id": "a", "context_key": "k", "seed": 0,
             "tools": [{"name": ""}]},
            "name: must have at least 1",
        ),
        (
            {"type": "load_context", "seq": 1, "id": "a", "context_key": "k", "seed": 0,
             "tools": [{"name": "t", "evil": 1}]},
            "unexpected field 'evil'",
        ),
        (
            {"type": "load_context", "seq": 1, "id": "a", "context_key": "k", "seed": 0,
             "tools": [{"name": "t"}] * 65},
            "tools: must have at most 64",
        ),
    ],
)  # fmt: skip
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
        {"type": "tool_request", "seq": 1, "id": "a", "name": "", "arguments": "{}"},
        {"type": "tool_request", "seq": 1, "id": "a", "name": "x" * 65, "arguments": "{}"},
        {"type": "tool_request", "seq": 1, "id": "a", "name": "t", "arguments": {"args": []}},
        {"type": "tool_request", "seq": 1, "id": "a", "name": "t"},
    ]  # fmt: skip
    for data in bad:
        with pytest.raises(wire.WireError):
            wire.decode_to_host(json.dumps(data))
    huge = {"type": "cell_result", "seq": 1, "id": "a", "reply_to": "b",
            "result": {"stdout": "", "stderr": "", "duration_s": 10**400}}  # fmt: skip
    with pytest.raises(wire.WireError, match="finite number"):
        wire.decode_to_host(json.dumps(huge))
    with pytest.raises(wire.WireError) as raised:
        wire.decode_to_host(json.dumps({"type": "x" * 100_000}))
    assert len(str(raised.value)) < 200  # what a sandbox sends is never echoed in full
    for raw in ("not json", "[" * 100_000, "1" * 5000):
        with pytest.raises(wire.WireError):
            wire.decode_to_host(raw)


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
    with_tools = wire.Bootstrap(
        sandbox_id="s", channel_in="i", channel_out="o", message_key_prefix="p:",
        context_index=2, tools=[ToolSpec(name="lookup")],
    )  # fmt: skip
    assert wire.Bootstrap.from_json(with_tools.to_json()) == with_tools


def big_result(n: int, message_id: str = "big") -> wire.CellDone:
    text = 'x"\\ü' * (n // 4)  # quotes, backslashes and non-ASCII grow when escaped
    return wire.CellDone(
        seq=1, id=message_id, reply_to="req", result=CellResult(stdout=text, stderr="")
    )


def parts_of(msg: wire.Message) -> list[wire.Part]:
    decoded = [wire.decode_to_host(p) for p in wire.payloads_to_host(msg)]
    assert all(isinstance(p, wire.Part) for p in decoded)
    return decoded  # type: ignore[return-value]


def test_small_messages_go_whole_and_large_ones_in_parts_that_fit_a_payload() -> None:
    small = wire.Heartbeat(seq=2, id="small")
    assert wire.payloads_to_host(small) == [small.to_json()]
    big = big_result(300_000)
    payloads = wire.payloads_to_host(big)
    assert len(payloads) > 2
    assert all(len(p) <= wire.MAX_PAYLOAD_BYTES for p in payloads)
    buffer = wire.PartBuffer()
    bodies = [buffer.add(part) for part in parts_of(big)]
    assert bodies[:-1] == [None] * (len(bodies) - 1)
    assert bodies[-1] is not None and wire.decode_whole_to_host(bodies[-1]) == big
    assert buffer.held_bytes == 0 and buffer.partial_messages == 0


def test_parts_arriving_twice_or_interleaved_still_make_each_message_once() -> None:
    first, second = parts_of(big_result(100_000, "one")), parts_of(big_result(90_000, "two"))
    buffer = wire.PartBuffer()
    done = []
    # Interleaved, and the first part of each published again (a re-publish).
    for a, b in zip(first, second, strict=False):
        for part in (a, b, first[0], second[0]):
            body = buffer.add(part)
            if body is not None:
                done.append(wire.decode_whole_to_host(body).id)
    for part in first[len(second) :]:
        body = buffer.add(part)
        if body is not None:
            done.append(wire.decode_whole_to_host(body).id)
    assert sorted(done) == ["one", "two"]
    # A copy that comes after its message was whole starts it over (the host then drops
    # the repeated id); at most that one part is held.
    assert buffer.held_bytes <= wire.PART_DATA_CHARS


def hostile_part(message_id: str, index: int, total: int = wire.MAX_PARTS) -> wire.Part:
    return wire.Part(
        message_id=message_id, index=index, total=total, data="y" * wire.PART_DATA_CHARS
    )


def test_never_finished_part_streams_are_dropped_and_memory_stays_bounded() -> None:
    buffer = wire.PartBuffer(max_bytes=20 * wire.PART_DATA_CHARS, max_messages=3)
    most = 0
    # A hostile sender: many messages that claim to be huge, none ever complete.
    for m in range(50):
        for i in range(7):
            # Each claims to be as large as the whole buffer.
            assert buffer.add(hostile_part(f"m{m}", i, total=20)) is None
            most = max(most, buffer.held_bytes)
    assert most <= buffer.max_bytes
    assert buffer.partial_messages <= 3
    assert buffer.dropped >= 47
    # An honest message still gets through afterwards.
    honest = parts_of(big_result(200_000, "honest"))
    bodies = [buffer.add(part) for part in honest]
    assert bodies[-1] is not None and wire.decode_whole_to_host(bodies[-1]).id == "honest"


def test_one_message_larger_than_the_buffer_is_refused() -> None:
    buffer = wire.PartBuffer(max_bytes=4 * wire.PART_DATA_CHARS)
    with pytest.raises(wire.WireError, match="too many"):
        buffer.add(hostile_part("huge", 0, total=10))
    for i in range(4):
        assert buffer.add(hostile_part("sly", i, total=5)) is None
    with pytest.raises(wire.WireError, match="too large"):
        buffer.add(
            hostile_part("sly", 4, total=5).__class__(message_id="sly", index=4, total=5, data="z")
        )
    assert buffer.held_bytes == 0 and buffer.partial_messages == 0


def test_malformed_parts_are_refused() -> None:
    buffer = wire.PartBuffer()
    for bad in (
        {"type": "part", "message_id": "a", "index": 0, "total": 1, "data": "x"},
        {"type": "part", "message_id": "a", "index": 0, "total": wire.MAX_PARTS + 1, "data": "x"},
        {"type": "part", "message_id": "a", "index": 0, "total": 2, "data": ""},
        {"type": "part", "message_id": "a", "index": 0, "total": 2, "data": "x", "more": 1},
    ):
        with pytest.raises(wire.WireError):
            wire.decode_to_host(json.dumps(bad))
    with pytest.raises(wire.WireError, match="index"):
        buffer.add(wire.Part(message_id="a", index=5, total=2, data="x"))
    with pytest.raises(wire.WireError, match="ASCII"):
        buffer.add(wire.Part(message_id="a", index=0, total=2, data="é"))
    buffer.add(wire.Part(message_id="b", index=0, total=2, data="x"))
    with pytest.raises(wire.WireError, match="changed its size"):
        buffer.add(wire.Part(message_id="b", index=1, total=3, data="x"))
    assert buffer.partial_messages == 0
    with pytest.raises(wire.WireError, match="part inside a part"):
        wire.decode_whole_to_host(wire.Part(message_id="c", index=0, total=2, data="x").to_json())
    with pytest.raises(wire.WireError, match="payload of"):
        wire.decode_to_host("x" * (wire.MAX_PAYLOAD_BYTES + 1))


def test_a_message_larger_than_the_wire_carries_is_refused_when_sent() -> None:
    huge = wire.SubcallRequest(
        seq=1, id="h", kind="llm", prompts=["p" * (wire.MAX_MESSAGE_BYTES // 2)] * 3
    )
    with pytest.raises(wire.WireError, match="more than the"):
        wire.payloads_to_host(huge)
    reply = wire.SubcallReply(
        seq=1,
        id="r",
        reply_to="q",
        results=[SubcallResult(ok=True, text="t" * wire.MAX_MESSAGE_BYTES)],
    )
    with pytest.raises(wire.WireError, match="more than the"):
        wire.payload_to_sandbox(reply)


def test_large_messages_to_the_sandbox_travel_by_reference(redis_client: redis.Redis) -> None:
    cell = wire.ExecCell(seq=1, id="big", code="x" * 100_000, timeout_s=5, max_output_chars=100)
    body, payload = wire.payload_to_sandbox(cell)
    assert json.loads(payload) == {"ref": "big"}
    small = wire.Shutdown(seq=2, id="s")
    assert wire.payload_to_sandbox(small) == (small.to_json(), small.to_json())
    # The host stores the copy; the sandbox GETs it by the reference.
    redis_client.set(wire.message_key("p:", "big"), body)
    assert wire.decode_to_sandbox(redis_client, "p:", payload) == cell
    redis_client.delete(wire.message_key("p:", "big"))
    with pytest.raises(wire.WireError, match="expired"):
        wire.decode_to_sandbox(redis_client, "p:", payload)
    reply = wire.SubcallReply(
        seq=3, id="r", reply_to="q", results=[SubcallResult(ok=True, text="t")]
    )
    redis_client.set(wire.reply_key("p:", "q"), reply.to_json())
    assert wire.fetch_reply_to_sandbox(redis_client, "p:", "q") == reply
    assert wire.fetch_reply_to_sandbox(redis_client, "p:", "unknown") is None
