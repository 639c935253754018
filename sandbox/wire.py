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
import math
import os
import reprlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar, Union

# Pub/sub payloads stay small so a slow subscriber is never cut off by Redis's
# output-buffer limit; anything bigger goes by reference.
INLINE_LIMIT_BYTES = 64 * 1024
# Copies of messages outlive any reasonable wait for them, then disappear.
MESSAGE_TTL_S = 3600


class WireError(ValueError):
    """A message that is not valid JSON or does not match the schema."""


R = TypeVar("R", bound="Record")


def _bounds(**limits: float) -> Any:
    """Field metadata: ge/gt for numbers, min_len/max_len for strings and lists."""
    return {"bounds": limits}


@dataclass(frozen=True, kw_only=True)
class Record:
    """A frozen dataclass whose fields are checked against their annotations when built."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            _check(getattr(self, f.name), hints[f.name], f.name, f.metadata.get("bounds", {}))

    @classmethod
    def from_dict(cls: type[R], data: Any) -> R:
        if not isinstance(data, dict):
            raise WireError(f"{cls.__name__} must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - names)
        if extra:
            raise WireError(f"{cls.__name__}: unexpected field {reprlib.repr(extra[0])}")
        hints = _hints(cls)
        values = {name: _convert(value, hints[name]) for name, value in data.items()}
        try:
            return cls(**values)
        except TypeError as exc:  # a required field is missing
            raise WireError(f"{cls.__name__}: {exc}") from exc

    @classmethod
    def from_json(cls: type[R], raw: str | bytes | bytearray) -> R:
        return cls.from_dict(_loads(raw))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        # ASCII escapes: model output may hold lone surrogates, which cannot be encoded as UTF-8.
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


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
class Slot(Record):
    ok: bool
    text: str


@dataclass(frozen=True, kw_only=True)
class SubcallReply(Message):
    TYPE: ClassVar[str] = "subcall_reply"

    reply_to: str
    results: list[Slot]


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
class CellResult(Message):
    TYPE: ClassVar[str] = "cell_result"

    reply_to: str
    stdout: str
    stderr: str
    error: str | None = None
    final: str | None = None
    # answer["content"] after the cell, even when not ready: the job's best partial answer.
    partial: str | None = None
    timed_out: bool = False
    duration_s: float = 0.0


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
    """Alive; also sent at once when the runtime got its Redis connection back."""

    TYPE: ClassVar[str] = "heartbeat"

    # The id of the last cell or context load the runtime received: a host waiting on one
    # the runtime does not have (published while its connection was down) sends it again.
    last_received: str | None = None


@dataclass(frozen=True, kw_only=True)
class Fatal(Message):
    """The runtime cannot go on (e.g. its context could not be loaded)."""

    TYPE: ClassVar[str] = "fatal"

    message: str


ToSandbox = ExecCell | SubcallReply | Shutdown | LoadContext
ToHost = Ready | CellResult | ContextLoaded | SubcallRequest | Heartbeat | Fatal
_TO_SANDBOX: dict[str, type[Message]] = {
    c.TYPE: c for c in (ExecCell, SubcallReply, Shutdown, LoadContext)
}
_TO_HOST: dict[str, type[Message]] = {
    c.TYPE: c for c in (Ready, CellResult, ContextLoaded, SubcallRequest, Heartbeat, Fatal)
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
    # How long the runtime tries to get a lost Redis connection back (a Redis restart)
    # before it gives up and exits.
    reconnect_s: float = field(default=60.0, metadata=_bounds(ge=0))


def new_id() -> str:
    # 128 random bits, like uuid4().hex, without importing uuid (and platform) at start.
    return os.urandom(16).hex()


# ---- checking ---------------------------------------------------------------------------

_hint_cache: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _hint_cache.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _hint_cache[cls] = hints
    return hints


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check(value: Any, hint: Any, name: str, bounds: dict[str, float]) -> None:
    """Raise WireError unless ``value`` is exactly of type ``hint`` and within ``bounds``."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return
        (inner,) = [o for o in options if o is not type(None)]
        _check(value, inner, name, bounds)
        return
    if origin is Literal:
        if value not in typing.get_args(hint):
            shown = reprlib.repr(value)
            raise WireError(f"{name}: {shown} is not one of {list(typing.get_args(hint))}")
        return
    if origin is list:
        if not isinstance(value, list):
            raise WireError(f"{name}: expected a list, got {_type_name(value)}")
        (item,) = typing.get_args(hint)
        for i, element in enumerate(value):
            _check(element, item, f"{name}[{i}]", {})
    elif hint is bool:
        if not isinstance(value, bool):
            raise WireError(f"{name}: expected a boolean, got {_type_name(value)}")
    elif hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise WireError(f"{name}: expected an integer, got {_type_name(value)}")
    elif hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise WireError(f"{name}: expected a number, got {_type_name(value)}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer too big for a float
            finite = False
        if not finite:
            raise WireError(f"{name}: expected a finite number")
    elif hint is str:
        if not isinstance(value, str):
            raise WireError(f"{name}: expected a string, got {_type_name(value)}")
    elif isinstance(hint, type) and issubclass(hint, Record):
        if not isinstance(value, hint):
            raise WireError(f"{name}: expected {hint.__name__}, got {_type_name(value)}")
    else:  # pragma: no cover - a schema bug, not bad input
        raise TypeError(f"{name}: unsupported annotation {hint!r}")
    _check_bounds(value, name, bounds)


def _check_bounds(value: Any, name: str, bounds: dict[str, float]) -> None:
    if "ge" in bounds and value < bounds["ge"]:
        raise WireError(f"{name}: must be >= {bounds['ge']:g}")
    if "gt" in bounds and value <= bounds["gt"]:
        raise WireError(f"{name}: must be > {bounds['gt']:g}")
    if "min_len" in bounds and len(value) < bounds["min_len"]:
        raise WireError(f"{name}: must have at least {bounds['min_len']:g} items or characters")
    if "max_len" in bounds and len(value) > bounds["max_len"]:
        raise WireError(f"{name}: must have at most {bounds['max_len']:g} items or characters")


def _convert(value: Any, hint: Any) -> Any:
    """JSON values to field values: nested records are built from their objects."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [o for o in typing.get_args(hint) if o is not type(None)]
        return value if value is None else _convert(value, inner[0])
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(hint)
        return [_convert(element, item) for element in value]
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value)
    if hint is str and isinstance(value, str) and not value.isascii():
        return _without_lone_surrogates(value)
    return value


def _without_lone_surrogates(text: str) -> str:
    """JSON may carry lone surrogates (``"\\ud800"``); nothing downstream can encode them."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def _loads(raw: str | bytes | bytearray) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise WireError(f"message is not JSON: {exc}") from exc


def _decode(table: dict[str, type[Message]], raw: str | bytes | bytearray, side: str) -> Any:
    data = _loads(raw)
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
    head = _loads(raw)
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
