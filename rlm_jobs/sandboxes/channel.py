"""The host's end of one sandbox's wire (``sandbox.wire``): the only writer of its keys.

Sending stores a copy of each message under the sandbox's prefix with a TTL (a reply also
under its request's id) and publishes it, inline or as a reference, in one pipeline,
copies first, so a receiver that sees the announcement can always fetch the copy.

Receiving reads the sandbox's out-channel from the process's ``PubSubHub``: parts are put
back together (``wire.PartBuffer``: at most ``MAX_MESSAGE_BYTES`` held per sandbox), every
``RELIABLE`` message is acknowledged each time it comes (the sandbox publishes it until it
hears so), and a message id already seen is dropped, so a re-published cell result or
sub-call request is acted on once. What a sandbox sends that does not decode is logged and
kept as a short note for the model (``take_problems``).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque

import redis

from rlm_jobs import keys
from rlm_jobs.errors import SandboxError
from rlm_jobs.sandboxes.hub import PubSubHub, Subscription
from sandbox import wire

log = logging.getLogger(__name__)

# Message ids remembered per sandbox to drop repeats: far more than the requests and
# results one sandbox has in flight, bounded so a hostile one cannot grow the set for ever.
SEEN_IDS = 16_384
# Notes about malformed messages kept for the model; more are only logged.
MAX_PROBLEMS = 5


class SandboxChannel:
    """Sends to and receives from one sandbox; ``close`` unsubscribes."""

    def __init__(self, client: redis.Redis, hub: PubSubHub, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        self.prefix = keys.sandbox_message_prefix(sandbox_id)
        self.channel_in = keys.sandbox_to_sandbox(sandbox_id)
        self.channel_out = keys.sandbox_to_host(sandbox_id)
        self._client = client
        self._hub = hub
        # Subscribed before the sandbox exists: its first message cannot be missed.
        self.sub: Subscription = hub.subscribe(self.channel_out)
        self._parts = wire.PartBuffer()
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        self._problems: list[str] = []
        self._seq = itertools.count()

    def next_seq(self) -> int:
        return next(self._seq)

    # ---- sending -------------------------------------------------------------------------

    def send(self, msg: wire.Message) -> None:
        try:
            body, payload = wire.payload_to_sandbox(msg)
        except wire.WireError as exc:
            raise SandboxError(f"cannot send to sandbox {self.sandbox_id}: {exc}") from exc
        ttl = keys.SANDBOX_KEY_TTL_S
        pipe = self._client.pipeline(transaction=False)
        pipe.set(keys.sandbox_message(self.sandbox_id, msg.id), body, ex=ttl)
        reply_to = getattr(msg, "reply_to", None)
        if reply_to is not None:
            pipe.set(keys.sandbox_reply(self.sandbox_id, reply_to), body, ex=ttl)
        pipe.publish(self.channel_in, payload)
        self._execute(pipe, msg)

    def ack(self, message_id: str) -> None:
        """Published only: if it is lost, the sandbox publishes its message again."""
        ack = wire.Ack(seq=self.next_seq(), id=wire.new_id(), reply_to=message_id)
        try:
            self._client.publish(self.channel_in, ack.to_json())
        except redis.RedisError as exc:
            log.warning(
                "sandbox %s: could not acknowledge %s: %s", self.sandbox_id, message_id, exc
            )

    def _execute(self, pipe: redis.client.Pipeline, msg: wire.Message) -> None:
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise SandboxError(
                f"could not send {msg.TYPE} to sandbox {self.sandbox_id}: {exc}"
            ) from exc

    # ---- receiving -----------------------------------------------------------------------

    def receive(self, timeout_s: float) -> wire.ToHost | None:
        """The next new message, or None if none came within ``timeout_s``."""
        raw = self._next_payload(timeout_s)
        while raw is not None:
            msg = self._decode(raw)
            if msg is not None:
                return msg
            raw = self._next_payload(0)
        return None

    def take_problems(self) -> list[str]:
        problems, self._problems = self._problems, []
        return problems

    def close(self) -> None:
        self.sub.close()

    def _next_payload(self, timeout_s: float) -> str | bytes | None:
        try:
            return self.sub.get(timeout_s)
        except SandboxError as exc:
            # The hub lost its connection: subscribe again. What was published meanwhile
            # is lost; the sandbox publishes it again until we acknowledge it.
            log.warning("sandbox %s: %s; subscribing again", self.sandbox_id, exc)
            self.sub = self._hub.subscribe(self.channel_out)
            return None

    def _decode(self, raw: str | bytes) -> wire.ToHost | None:
        try:
            msg = wire.decode_to_host(raw)
            if isinstance(msg, wire.Part):
                body = self._parts.add(msg)
                if body is None:
                    return None
                msg = wire.decode_whole_to_host(body)
        except wire.WireError as exc:
            log.warning("sandbox %s sent a malformed message: %s", self.sandbox_id, exc)
            if len(self._problems) < MAX_PROBLEMS:
                self._problems.append(f"[host] ignored a malformed message from the sandbox: {exc}")
            return None
        if isinstance(msg, wire.RELIABLE):
            self.ack(msg.id)
        if isinstance(msg, wire.Heartbeat):
            return msg  # nothing acts on a heartbeat twice, and they never repeat an id
        if msg.id in self._seen:
            return None
        self._remember(msg.id)
        return msg

    def _remember(self, message_id: str) -> None:
        self._seen.add(message_id)
        self._seen_order.append(message_id)
        if len(self._seen_order) > SEEN_IDS:
            self._seen.discard(self._seen_order.popleft())
