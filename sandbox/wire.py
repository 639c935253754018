"""The sandbox <-> orchestrator wire schema: the one module both sides import.

Transport: two Redis pub/sub channels per sandbox. Pub/sub is at-most-once, so every
message is also stored under ``<message_key_prefix><id>`` with a TTL (a reply also under
``<message_key_prefix>reply:<request id>``); messages larger
than ``INLINE_LIMIT_BYTES`` travel as a ``{"ref": id}`` pointer to that copy. A receiver
that waited too long for a reply can fetch the copy by the id it expects.

Every message has a ``type``, a per-sender ``seq`` and an ``id``; replies name the
request they answer in ``reply_to``.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

# Pub/sub payloads stay small so a slow subscriber is never cut off by Redis's
# output-buffer limit; anything bigger goes by reference.
INLINE_LIMIT_BYTES = 64 * 1024
# Copies of messages outlive any reasonable wait for them, then disappear.
MESSAGE_TTL_S = 3600


class WireError(ValueError):
    """A message that is not valid JSON or does not match the schema."""


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=0)
    id: str = Field(min_length=1, max_length=64)


# ---- orchestrator -> sandbox ------------------------------------------------------------


class ExecCell(_Msg):
    type: Literal["exec"] = "exec"
    code: str
    timeout_s: float = Field(gt=0)
    max_output_chars: int = Field(ge=100)


class Slot(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: bool
    text: str


class SubcallReply(_Msg):
    type: Literal["subcall_reply"] = "subcall_reply"
    reply_to: str
    results: list[Slot]


class Shutdown(_Msg):
    type: Literal["shutdown"] = "shutdown"


class LoadContext(_Msg):
    """Load ``context`` from this key (a pooled sandbox gets its job this way).

    The host grants the sandbox's ACL user read access to the key first.
    """

    type: Literal["load_context"] = "load_context"
    context_key: str = Field(min_length=1, max_length=256)


# ---- sandbox -> orchestrator ------------------------------------------------------------


class Ready(_Msg):
    type: Literal["ready"] = "ready"
    pid: int


class CellResult(_Msg):
    type: Literal["cell_result"] = "cell_result"
    reply_to: str
    stdout: str
    stderr: str
    error: str | None = None
    final: str | None = None
    # answer["content"] after the cell, even when not ready: the job's best partial answer.
    partial: str | None = None
    timed_out: bool = False
    duration_s: float = 0.0


class ContextLoaded(_Msg):
    type: Literal["context_loaded"] = "context_loaded"
    reply_to: str
    size_bytes: int = Field(ge=0)


class SubcallRequest(_Msg):
    type: Literal["subcall_request"] = "subcall_request"
    kind: Literal["llm", "rlm"]
    prompts: list[str] = Field(min_length=1)
    model: str | None = None


class Heartbeat(_Msg):
    type: Literal["heartbeat"] = "heartbeat"


class Fatal(_Msg):
    """The runtime cannot go on (e.g. its context could not be loaded)."""

    type: Literal["fatal"] = "fatal"
    message: str


ToSandbox = Annotated[ExecCell | SubcallReply | Shutdown | LoadContext, Field(discriminator="type")]
ToHost = Annotated[
    Ready | CellResult | ContextLoaded | SubcallRequest | Heartbeat | Fatal,
    Field(discriminator="type"),
]
TO_SANDBOX: TypeAdapter[ToSandbox] = TypeAdapter(ToSandbox)
TO_HOST: TypeAdapter[ToHost] = TypeAdapter(ToHost)


class Bootstrap(BaseModel):
    """Written to the runtime's stdin (never argv or env): who it is and how to reach Redis."""

    model_config = ConfigDict(extra="forbid")

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
    heartbeat_s: float = Field(default=5.0, gt=0)


def new_id() -> str:
    return uuid.uuid4().hex


class _Redis(Protocol):
    def set(self, name: str, value: str, ex: int | None = ...) -> Any: ...
    def get(self, name: str) -> Any: ...
    def publish(self, channel: str, message: str) -> Any: ...


def send(redis: _Redis, channel: str, message_key_prefix: str, msg: BaseModel) -> None:
    """Store a copy under the message's id, then publish it (inline or by reference)."""
    body = msg.model_dump_json()
    msg_id = msg.id  # type: ignore[attr-defined]
    redis.set(message_key_prefix + msg_id, body, ex=MESSAGE_TTL_S)
    reply_to = getattr(msg, "reply_to", None)
    if reply_to is not None:
        redis.set(message_key_prefix + "reply:" + reply_to, body, ex=MESSAGE_TTL_S)
    if len(body) <= INLINE_LIMIT_BYTES:
        redis.publish(channel, body)
    else:
        redis.publish(channel, json.dumps({"ref": msg_id}))


def _resolve(redis: _Redis, message_key_prefix: str, raw: str | bytes) -> str | bytes:
    try:
        head = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"message is not JSON: {exc}") from exc
    if isinstance(head, dict) and set(head) == {"ref"} and isinstance(head["ref"], str):
        stored = redis.get(message_key_prefix + head["ref"])
        if stored is None:
            raise WireError(f"message {head['ref']!r} was announced but its copy has expired")
        return stored  # type: ignore[no-any-return]
    return raw


def decode_to_host(redis: _Redis, message_key_prefix: str, raw: str | bytes) -> ToHost:
    try:
        return TO_HOST.validate_json(_resolve(redis, message_key_prefix, raw))
    except ValidationError as exc:
        raise WireError(f"bad message from sandbox: {exc.errors()[0]['msg']}") from exc


def decode_to_sandbox(redis: _Redis, message_key_prefix: str, raw: str | bytes) -> ToSandbox:
    try:
        return TO_SANDBOX.validate_json(_resolve(redis, message_key_prefix, raw))
    except ValidationError as exc:
        raise WireError(f"bad message for sandbox: {exc.errors()[0]['msg']}") from exc


def fetch_reply_to_host(redis: _Redis, message_key_prefix: str, request_id: str) -> ToHost | None:
    """The stored reply of the sandbox to ``request_id``, if it has sent one."""
    stored = redis.get(message_key_prefix + "reply:" + request_id)
    return None if stored is None else TO_HOST.validate_json(stored)


def fetch_reply_to_sandbox(
    redis: _Redis, message_key_prefix: str, request_id: str
) -> ToSandbox | None:
    """The stored reply of the orchestrator to ``request_id``, if it has sent one."""
    stored = redis.get(message_key_prefix + "reply:" + request_id)
    return None if stored is None else TO_SANDBOX.validate_json(stored)
