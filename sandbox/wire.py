"""The sandbox <-> orchestrator wire: its messages and how they travel.

Two Redis pub/sub channels per sandbox, and the host is the only writer of the sandbox's
keys (its ACL user may SUBSCRIBE, PUBLISH and GET, nothing else):

- **Host -> sandbox.** The host stores a copy of every message under
  ``message_key(prefix, id)`` with a TTL (a reply also under ``reply_key(prefix, request
  id)``), then publishes it, or a ``{"ref": id}`` pointer to the copy when it is larger
  than ``INLINE_LIMIT_BYTES``. A sandbox that waited too long for a reply GETs the copy.
  ``Ack`` is the exception: it is published only (a lost ack costs one more re-publish).
- **Sandbox -> host.** The sandbox only publishes. A message larger than
  ``INLINE_LIMIT_BYTES`` goes as ``Part`` frames (message id, index, total), which the
  host puts back together (``PartBuffer``, bounded per sandbox). Pub/sub loses what is
  published while nobody listens, so the messages that must arrive (``RELIABLE``: ready,
  context_loaded, cell_result, fatal) are published again, less and less often, until the
  host answers with ``Ack(reply_to=id)``; the host acknowledges every copy it receives and
  acts on each id once. A sub-call or tool request is its own retry: it is published again
  every few seconds until its ``SubcallReply`` comes (``sandbox.subcalls``).

Every message has a ``type``, a per-sender ``seq`` and an ``id``; replies name the request
they answer in ``reply_to``. Messages are ``records.Record``s, checked when built and when
decoded on either side. Stdlib only: the sandbox imports this at every start.
"""

from __future__ import annotations

import json
import os
import reprlib
from typing import Any, ClassVar, Literal, Protocol

from sandbox.records import CellResult, Record, SubcallResult, ToolSpec, WireError, field, loads

__all__ = [
    "INLINE_LIMIT_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_PAYLOAD_BYTES",
    "RELIABLE",
    "Ack",
    "Bootstrap",
    "CellDone",
    "ContextLoaded",
    "ExecCell",
    "Fatal",
    "Heartbeat",
    "LoadContext",
    "Message",
    "Part",
    "PartBuffer",
    "Ready",
    "Shutdown",
    "SubcallReply",
    "SubcallRequest",
    "ToHost",
    "ToSandbox",
    "ToolRequest",
    "WireError",
    "decode_to_host",
    "decode_to_sandbox",
    "decode_whole_to_host",
    "fetch_reply_to_sandbox",
    "message_key",
    "new_id",
    "payload_to_sandbox",
    "payloads_to_host",
    "reply_key",
]

# Pub/sub payloads stay small so a slow subscriber is never cut off by Redis's
# output-buffer limit for one message; anything bigger is stored (to a sandbox) or split.
INLINE_LIMIT_BYTES = 64 * 1024
# Message text per part: JSON-escaping it again at most doubles it, so a part stays
# within MAX_PAYLOAD_BYTES.
PART_DATA_CHARS = INLINE_LIMIT_BYTES // 2
# The largest payload a sandbox sends that the host reads at all (a part and its header).
MAX_PAYLOAD_BYTES = INLINE_LIMIT_BYTES + 1024
# The largest message either side sends, as JSON: far above any cell result (output is
# cut to max_output_chars) and most sub-call batches, and what one sandbox may make the
# host buffer while it puts parts back together.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_PARTS = -(-MAX_MESSAGE_BYTES // PART_DATA_CHARS)
# Messages a host reassembles at once per sandbox: a sender publishes one message's parts
# in a few pipelines, so more than one at a time only comes from model threads.
MAX_PARTIAL_MESSAGES = 8
# Seeds fit a signed 64-bit integer, whatever reads the JSON.
MAX_SEED = 2**63 - 1
# Tools one sandbox is told about: far more than a prompt can usefully describe.
MAX_TOOLS = 64
# Contexts one REPL holds as context_0, context_1, ...: the questions of one session.
MAX_CONTEXT_INDEX = 100_000


def message_key(prefix: str, message_id: str) -> str:
    """The copy of a host -> sandbox message (``rlm_jobs.keys.sandbox_message``)."""
    return prefix + message_id


def reply_key(prefix: str, request_id: str) -> str:
    """The copy of the host's reply to a request (``rlm_jobs.keys.sandbox_reply``)."""
    return prefix + "reply:" + request_id


class Message(Record):
    TYPE: ClassVar[str] = ""

    seq: int = field(ge=0)
    id: str = field(min_len=1, max_len=64)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, **super().to_dict()}


# ---- orchestrator -> sandbox ------------------------------------------------------------


class ExecCell(Message):
    TYPE: ClassVar[str] = "exec"

    code: str
    timeout_s: float = field(gt=0)
    max_output_chars: int = field(ge=100)


class SubcallReply(Message):
    TYPE: ClassVar[str] = "subcall_reply"

    reply_to: str
    # ok and text only: usage and worker names stay on the host.
    results: list[SubcallResult]


class Shutdown(Message):
    TYPE: ClassVar[str] = "shutdown"


class LoadContext(Message):
    """Load ``context`` from this key (a pooled sandbox gets its job this way).

    The host grants the sandbox's ACL user read access to the key first.
    """

    TYPE: ClassVar[str] = "load_context"

    context_key: str = field(min_len=1, max_len=256)
    # random.seed() before the first cell (sandbox.determinism).
    seed: int = field(ge=0, le=MAX_SEED)
    # Also bound as context_<index>: a session's later questions load theirs beside the
    # earlier ones (rlm_jobs.sessions).
    context_index: int = field(default=0, ge=0, le=MAX_CONTEXT_INDEX)
    # The host's tools the REPL binds (sandbox.tools); the job's, so a pooled sandbox
    # learns them here.
    tools: list[ToolSpec] = field(default_factory=list, max_len=MAX_TOOLS)


class Ack(Message):
    """The host has a message of the sandbox's (``RELIABLE``): stop publishing it."""

    TYPE: ClassVar[str] = "ack"

    reply_to: str = field(min_len=1, max_len=64)


# ---- sandbox -> orchestrator ------------------------------------------------------------


class Ready(Message):
    TYPE: ClassVar[str] = "ready"

    pid: int


class CellDone(Message):
    TYPE: ClassVar[str] = "cell_result"

    reply_to: str
    result: CellResult


class ContextLoaded(Message):
    TYPE: ClassVar[str] = "context_loaded"

    reply_to: str
    size_bytes: int = field(ge=0)


class SubcallRequest(Message):
    TYPE: ClassVar[str] = "subcall_request"

    kind: Literal["llm", "rlm"]
    prompts: list[str] = field(min_len=1)
    model: str | None = None


class ToolRequest(Message):
    """Call the host's tool ``name``: answered, like a sub-call, by a ``SubcallReply`` with
    one result (``ok`` and the result as JSON, or the error), and published again until then.
    """

    TYPE: ClassVar[str] = "tool_request"

    name: str = field(min_len=1, max_len=64)
    # JSON text of {"args": [...], "kwargs": {...}}; the host checks its size and shape.
    arguments: str


class Heartbeat(Message):
    """Alive; also sent at once when the runtime got its Redis connection back."""

    TYPE: ClassVar[str] = "heartbeat"

    # The id of the last cell or context load the runtime received: a host waiting on one
    # the runtime does not have (published while its connection was down) sends it again.
    last_received: str | None = None


class Fatal(Message):
    """The runtime cannot go on (e.g. its context could not be loaded)."""

    TYPE: ClassVar[str] = "fatal"

    message: str


class Part(Record):
    """One piece of a sandbox -> host message too large to publish whole."""

    TYPE: ClassVar[str] = "part"

    message_id: str = field(min_len=1, max_len=64)
    index: int = field(ge=0)
    total: int = field(ge=2, le=MAX_PARTS)
    data: str = field(min_len=1, max_len=PART_DATA_CHARS)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, **super().to_dict()}


ToSandbox = ExecCell | SubcallReply | Shutdown | LoadContext | Ack
ToHost = Ready | CellDone | ContextLoaded | SubcallRequest | ToolRequest | Heartbeat | Fatal
# What the sandbox publishes until the host acknowledges it.
RELIABLE: tuple[type[Message], ...] = (Ready, ContextLoaded, CellDone, Fatal)
_TO_SANDBOX: dict[str, type[Record]] = {
    c.TYPE: c for c in (ExecCell, SubcallReply, Shutdown, LoadContext, Ack)
}
_TO_HOST: dict[str, type[Record]] = {
    c.TYPE: c
    for c in (Ready, CellDone, ContextLoaded, SubcallRequest, ToolRequest, Heartbeat, Fatal, Part)
}


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
    # random.seed() once context_key is loaded (sandbox.determinism).
    seed: int = field(default=0, ge=0, le=MAX_SEED)
    # As in LoadContext: context_key is also bound as context_<index>, and the tools.
    context_index: int = field(default=0, ge=0, le=MAX_CONTEXT_INDEX)
    tools: list[ToolSpec] = field(default_factory=list, max_len=MAX_TOOLS)
    heartbeat_s: float = field(default=5.0, gt=0)
    # How long the runtime tries to get a lost Redis connection back (a Redis restart)
    # before it gives up and exits.
    reconnect_s: float = field(default=60.0, ge=0)
    # The host keeps stdin open for as long as it lives (the process backend): end of file
    # on it means the host is gone, however it ended, and the runtime exits. bwrap's
    # --die-with-parent alone misses a host killed while bwrap was still starting.
    stdin_lifeline: bool = False


def new_id() -> str:
    # 128 random bits, like uuid4().hex, without importing uuid (and platform) at start.
    return os.urandom(16).hex()


# ---- decoding ---------------------------------------------------------------------------


def _decode(table: dict[str, type[Record]], raw: str | bytes | bytearray, side: str) -> Any:
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


# ---- sandbox -> host --------------------------------------------------------------------


def payloads_to_host(msg: Message) -> list[str]:
    """What the sandbox publishes for ``msg``: the message itself, or its parts in order."""
    body = msg.to_json()  # ASCII: characters are bytes
    if len(body) <= INLINE_LIMIT_BYTES:
        return [body]
    if len(body) > MAX_MESSAGE_BYTES:
        raise WireError(
            f"the {msg.TYPE} message is {len(body):,} bytes as JSON, more than the "
            f"{MAX_MESSAGE_BYTES:,} one message may carry"
        )
    total = -(-len(body) // PART_DATA_CHARS)
    return [
        Part(
            message_id=msg.id,
            index=i,
            total=total,
            data=body[i * PART_DATA_CHARS : (i + 1) * PART_DATA_CHARS],
        ).to_json()
        for i in range(total)
    ]


def decode_to_host(raw: str | bytes | bytearray) -> ToHost | Part:
    """One payload from the sandbox: a message, or a part for ``PartBuffer``."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise WireError(
            f"bad message from sandbox: a payload of {len(raw):,} bytes "
            f"(the limit is {MAX_PAYLOAD_BYTES:,}; larger messages come in parts)"
        )
    msg: ToHost | Part = _decode(_TO_HOST, raw, "from sandbox")
    return msg


def decode_whole_to_host(body: str) -> ToHost:
    """A message put back together from its parts (never a part itself)."""
    msg = _decode(_TO_HOST, body, "from sandbox")
    if isinstance(msg, Part):
        raise WireError("bad message from sandbox: a part inside a part")
    result: ToHost = msg
    return result


class _Partial:
    def __init__(self, total: int) -> None:
        self.total = total
        self.chunks: dict[int, str] = {}
        self.size = 0


class PartBuffer:
    """Puts one sender's parts back together, holding at most ``max_bytes`` of them.

    A message whose parts stop coming is dropped once newer ones need the room (oldest
    first), so a hostile sender can make the host hold no more than ``max_bytes`` of text
    in at most ``max_messages`` messages, however many parts it invents.
    """

    def __init__(
        self, max_bytes: int = MAX_MESSAGE_BYTES, max_messages: int = MAX_PARTIAL_MESSAGES
    ) -> None:
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self._partial: dict[str, _Partial] = {}  # oldest first
        self.held_bytes = 0
        self.dropped = 0

    @property
    def partial_messages(self) -> int:
        return len(self._partial)

    def add(self, part: Part) -> str | None:
        """The whole message once its last part came, else None; WireError for a bad part."""
        if not part.data.isascii():
            raise WireError("bad part from sandbox: its data is not ASCII JSON")
        if part.index >= part.total:
            raise WireError(f"bad part from sandbox: index {part.index} of {part.total}")
        partial = self._partial.get(part.message_id)
        if partial is None:
            if part.total * PART_DATA_CHARS > self.max_bytes + PART_DATA_CHARS:
                raise WireError(f"bad part from sandbox: {part.total} parts is too many")
            while len(self._partial) >= self.max_messages:
                self._drop_oldest()
            partial = self._partial[part.message_id] = _Partial(part.total)
        elif partial.total != part.total:
            self._drop(part.message_id)
            raise WireError(f"bad part from sandbox: message {part.message_id} changed its size")
        if part.index in partial.chunks:
            return None  # the sender published it again; the first copy counts
        while self.held_bytes + len(part.data) > self.max_bytes:
            if next(iter(self._partial)) == part.message_id and len(self._partial) == 1:
                self._drop(part.message_id)
                raise WireError(f"bad part from sandbox: message {part.message_id} is too large")
            self._drop_oldest(keep=part.message_id)
        partial.chunks[part.index] = part.data
        partial.size += len(part.data)
        self.held_bytes += len(part.data)
        if len(partial.chunks) < partial.total:
            return None
        self._drop(part.message_id, dropped=False)
        return "".join(partial.chunks[i] for i in range(partial.total))

    def _drop_oldest(self, keep: str | None = None) -> None:
        victim = next(m for m in self._partial if m != keep)
        self._drop(victim)

    def _drop(self, message_id: str, *, dropped: bool = True) -> None:
        partial = self._partial.pop(message_id)
        self.held_bytes -= partial.size
        self.dropped += dropped


# ---- host -> sandbox --------------------------------------------------------------------


def payload_to_sandbox(msg: Message) -> tuple[str, str]:
    """The message as stored, and what the host publishes for it (itself, or a reference)."""
    body = msg.to_json()
    if len(body) > MAX_MESSAGE_BYTES:
        raise WireError(
            f"the {msg.TYPE} message is {len(body):,} bytes as JSON, more than the "
            f"{MAX_MESSAGE_BYTES:,} one message may carry"
        )
    if len(body) <= INLINE_LIMIT_BYTES:
        return body, body
    return body, json.dumps({"ref": msg.id})


class _Redis(Protocol):
    def get(self, name: str) -> Any: ...


def _resolve(
    redis: _Redis, message_key_prefix: str, raw: str | bytes | bytearray
) -> str | bytes | bytearray:
    head = loads(raw)
    if isinstance(head, dict) and set(head) == {"ref"} and isinstance(head["ref"], str):
        stored = redis.get(message_key(message_key_prefix, head["ref"]))
        if stored is None:
            raise WireError(f"message {head['ref']!r} was announced but its copy has expired")
        return stored  # type: ignore[no-any-return]
    return raw


def decode_to_sandbox(redis: _Redis, message_key_prefix: str, raw: str | bytes) -> ToSandbox:
    msg: ToSandbox = _decode(_TO_SANDBOX, _resolve(redis, message_key_prefix, raw), "for sandbox")
    return msg


def fetch_reply_to_sandbox(
    redis: _Redis, message_key_prefix: str, request_id: str
) -> ToSandbox | None:
    """The stored reply of the orchestrator to ``request_id``, if it has sent one."""
    stored = redis.get(reply_key(message_key_prefix, request_id))
    return None if stored is None else _decode(_TO_SANDBOX, stored, "for sandbox")
