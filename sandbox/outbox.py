"""Messages the host must get, published again until it acknowledges them.

Pub/sub delivers only to whoever listens at that moment: a host whose connection dropped
for a moment misses what was published meanwhile, and the sandbox may not store a copy
(its ACL user has no write command). So each ``wire.RELIABLE`` message stays here until
the host's ``Ack`` for its id arrives, and ``resend_due`` publishes it again, first after
``FIRST_RESEND_S`` and then at doubling intervals up to ``MAX_RESEND_S``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# The host acknowledges within milliseconds; a second without one means it missed it.
FIRST_RESEND_S = 1.0
# A host that is away for long (a reconnect that takes a while) is not flooded meanwhile.
MAX_RESEND_S = 8.0

Publish = Callable[[list[str]], None]


class _Pending:
    __slots__ = ("interval_s", "next_at", "payloads")

    def __init__(self, payloads: list[str], next_at: float, interval_s: float) -> None:
        self.payloads = payloads
        self.next_at = next_at
        self.interval_s = interval_s


class Outbox:
    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._pending: dict[str, _Pending] = {}
        self._cond = threading.Condition()

    def send(self, message_id: str, payloads: list[str]) -> None:
        """Publish now, and again until ``acked(message_id)``."""
        with self._cond:
            self._pending[message_id] = _Pending(
                payloads, time.monotonic() + FIRST_RESEND_S, FIRST_RESEND_S
            )
        self._publish(payloads)

    def acked(self, message_id: str) -> bool:
        with self._cond:
            found = self._pending.pop(message_id, None) is not None
            self._cond.notify_all()
        return found

    @property
    def unacked(self) -> int:
        with self._cond:
            return len(self._pending)

    def wait_acked(self, message_id: str, timeout_s: float) -> bool:
        """Whether the host acknowledged ``message_id`` within ``timeout_s``."""
        with self._cond:
            return self._cond.wait_for(lambda: message_id not in self._pending, timeout_s)

    def resend_due(self) -> None:
        """Publish again what is due; call it often (the runtime's keeper thread does)."""
        now = time.monotonic()
        with self._cond:
            due = [p for p in self._pending.values() if p.next_at <= now]
            for pending in due:
                pending.interval_s = min(MAX_RESEND_S, pending.interval_s * 2)
                pending.next_at = now + pending.interval_s
        for pending in due:
            self._publish(pending.payloads)
