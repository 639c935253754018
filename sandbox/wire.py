"""The sandbox <-> orchestrator wire schema: the one module both sides import.

Transport: two Redis pub/sub channels per sandbox. Pub/sub is at-most-once, so every
message is also stored under ``<message_key_prefix><id>`` with a TTL (a reply also under
``<message_key_prefix>reply:<request id>``); messages larger
than ``INLINE_LIMIT_BYTES`` travel as a ``{"ref": id}`` pointer to that copy. A receiver
that waited too long for a reply can fetch the copy by the id it expects.

Every message has a ``type``, a per-sender ``seq`` and an ``id``; replies name the
request they answer in ``reply_to``.

Stdlib only: the sandbox imports this at every start, and pydantic's import cost more CPU
than everything else the runtime does before its first cell. The checks are as strict as
the models they replace: exact field sets, exact JSON types, the same bounds. A message is
checked when it is built, on either side, so nothing invalid is sent or accepted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import reprlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from sandbox.records import CellResult, Record, SubcallResult, WireError, loads
from sandbox.records import bounds as _bounds

__all__ = [
    "Bootstrap",
    "CellDone",
    "CellResult",
    "ContextLoaded",
    "ExecCell",
    "Fatal",
    "Heartbeat",
    "LoadContext",
    "Message",
    "Ready",
    "Shutdown",
    "SubcallReply",
    "SubcallRequest",
    "SubcallResult",
    "ToHost",
    "ToSandbox",
    "WireError",
    "new_id",
]

# Pub/sub payloads stay small so a slow subscriber is never cut off by Redis's
# output-buffer limit; anything bigger goes by reference.
INLINE_LIMIT_BYTES = 64 * 1024
# Copies of messages outlive any reasonable wait for them, then disappear.
MESSAGE_TTL_S = 3600


@dataclass(frozen=True, kw_only=True)
class Message(Record):
    TYPE: ClassVar[str] = ""

    seq: int = field(metadata=_bounds(ge=0))
    id: str = field(metadata=_bounds(min_len=1, max_len=64))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, **dataclasses.asdict(self)}


# ---- orchestrator -> sandbox ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ExecCell(Message):
    TYPE: ClassVar[str] = "exec"

    code: str
    timeout_s: float = field(metadata=_bounds(gt=0))
    max_output_chars: int = field(metadata=_bounds(ge=100))


@dataclass(frozen=True, kw_only=True)
class SubcallReply(Message):
    TYPE: ClassVar[str] = "subcall_reply"

    reply_to: str
    # ok and text only: usage and worker names stay on the host.
    results: list[SubcallResult]


@dataclass(frozen=True, kw_only=True)
class Shutdown(Message):
    TYPE: ClassVar[str] = "shutdown"


@dataclass(frozen=True, kw_only=True)
class LoadContext(Message):
    """Load ``context`` from this key (a pooled sandbox gets its job this way).

    The host grants the sandbox's ACL user read access to the key first.
    """

    TYPE: ClassVar[str] = "load_context"

    context_key: str = field(metadata=_bounds(min_len=1, max_len=256))


# ---- sandbox -> orchestrator ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Ready(Message):
    TYPE: ClassVar[str] = "ready"

    pid: int


@dataclass(frozen=True, kw_only=True)
class CellDone(Message):
    TYPE: ClassVar[str] = "cell_result"

    reply_to: str
    result: CellResult


@dataclass(frozen=True, kw_only=True)
class ContextLoaded(Message):
    TYPE: ClassVar[str] = "context_loaded"

    reply_to: str
    size_bytes: int = field(metadata=_bounds(ge=0))


@dataclass(frozen=True, kw_only=True)
class SubcallRequest(Message):
    TYPE: ClassVar[str] = "subcall_request"

    kind: Literal["llm", "rlm"]
    prompts: list[str] = field(metadata=_bounds(min_len=1))
    model: str | None = None


@dataclass(frozen=True, kw_only=True)
class Heartbeat(Message):
    TYPE: ClassVar[str] = "heartbeat"


@dataclass(frozen=True, kw_only=True)
class Fatal(Message):
    """The runtime cannot go on (e.g. its context could not be loaded)."""

    TYPE: ClassVar[str] = "fatal"

    message: str


ToSandbox = ExecCell | SubcallReply | Shutdown | LoadContext
ToHost = Ready | CellDone | ContextLoaded | SubcallRequest | Heartbeat | Fatal
_TO_SANDBOX: dict[str, type[Message]] = {
    c.TYPE: c for c in (ExecCell, SubcallReply, Shutdown, LoadContext)
}
_TO_HOST: dict[str, type[Message]] = {
    c.TYPE: c for c in (Ready, CellDone, ContextLoaded, SubcallRequest, Heartbeat, Fatal)
}


@dataclass(frozen=True, kw_only=True)
class Bootstrap(Record):
    """Written to the runtime's stdin (never argv or env): who it is and how to reach Redis."""

    sandbox_id: str
    redis_unix_socket: str | None = None
    redis_host: str | None = None
    redis_port: int | None = None
    username: str | None = None
    password: str | None = None
    channel_in: str
    channel_out: str
    message_key_prefix: str
    # Loaded before Ready when given; a pooled sandbox starts without one and waits for
    # LoadContext (its ACL user cannot read any context until then).
    context_key: str | None = None
    heartbeat_s: float = field(default=5.0, metadata=_bounds(gt=0))


def new_id() -> str:
    # 128 random bits, like uuid4().hex, without importing uuid (and platform) at start.
    return os.urandom(16).hex()


def _decode(table: dict[str, type[Message]], raw: str | bytes | bytearray, side: str) -> Any:
    data = loads(raw)
    if not isinstance(data, dict):
        raise WireError(f"bad message {side}: not a JSON object")
    kind = data.pop("type", None)
    cls = table.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"bad message {side}: unknown type {reprlib.repr(kind)}")
    try:
        return cls.from_dict(data)
    # Only WireError is expected; anything else a message provokes is one too (hostile
    # input must never reach callers as an exception they do not handle).
    except (WireError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise WireError(f"bad message {side}: {exc}") from exc


# ---- sending and receiving --------------------------------------------------------------


class _Pipeline(Protocol):
    def execute_command(self, *args: Any) -> Any: ...
    def execute(self) -> Any: ...


class _Redis(Protocol):
    def get(self, name: str) -> Any: ...
    def pipeline(self, transaction: bool = ...) -> Any: ...


def send(redis: _Redis, channel: str, message_key_prefix: str, msg: Message) -> None:
    """Store a copy under the message's id, then publish it (inline or by reference).

    One round trip: the copies and the PUBLISH go in one pipeline, copies first, so a
    receiver that sees the announcement can always fetch the copy.
    """
    body = msg.to_json()
    pipe: _Pipeline = redis.pipeline(transaction=False)
    pipe.execute_command("SET", message_key_prefix + msg.id, body, "EX", MESSAGE_TTL_S)
    reply_to = getattr(msg, "reply_to", None)
    if reply_to is not None:
        key = message_key_prefix + "reply:" + reply_to
        pipe.execute_command("SET", key, body, "EX", MESSAGE_TTL_S)
    if len(body) <= INLINE_LIMIT_BYTES:  # ASCII: characters are bytes
        pipe.execute_command("PUBLISH", channel, body)
    else:
        pipe.execute_command("PUBLISH", channel, json.dumps({"ref": msg.id}))
    pipe.execute()


def _resolve(
    redis: _Redis, message_key_prefix: str, raw: str | bytes | bytearray
) -> str | bytes | bytearray:
    head = loads(raw)
    if isinstance(head, dict) and set(head) == {"ref"} and isinstance(head["ref"], str):
        stored = redis.get(message_key_prefix + head["ref"])
        if stored is None:
            raise WireError(f"message {head['ref']!r} was announced but its copy has expired")
        return stored  # type: ignore[no-any-return]
    return raw


def decode_to_host(redis: _Redis, message_key_prefix: str, raw: str | bytes) -> ToHost:
    msg: ToHost = _decode(_TO_HOST, _resolve(redis, message_key_prefix, raw), "from sandbox")
    return msg


def decode_to_sandbox(redis: _Redis, message_key_prefix: str, raw: str | bytes) -> ToSandbox:
    msg: ToSandbox = _decode(_TO_SANDBOX, _resolve(redis, message_key_prefix, raw), "for sandbox")
    return msg


def fetch_reply_to_host(redis: _Redis, message_key_prefix: str, request_id: str) -> ToHost | None:
    """The stored reply of the sandbox to ``request_id``, if it has sent one."""
    stored = redis.get(message_key_prefix + "reply:" + request_id)
    return None if stored is None else _decode(_TO_HOST, stored, "from sandbox")


def fetch_reply_to_sandbox(
    redis: _Redis, message_key_prefix: str, request_id: str
) -> ToSandbox | None:
    """The stored reply of the orchestrator to ``request_id``, if it has sent one."""
    stored = redis.get(message_key_prefix + "reply:" + request_id)
    return None if stored is None else _decode(_TO_SANDBOX, stored, "for sandbox")
