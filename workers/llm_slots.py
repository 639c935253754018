"""The provider slots of one llm worker process, counted so a chunk starts only what fits.

Prompt credit (``workers.credit``) stops a process asking for chunks once it holds as many
prompts as it has slots, but the chunk that crosses the line is taken whole: a process of
100 slots holding 96 prompts takes a chunk of 7, and 3 of them wait a whole provider
latency for a slot while another process has slots free (a fan-out that fits the pool
exactly took two latencies instead of one in about half of its runs). So a chunk reserves
slots before it runs, and what does not fit goes back to the queue once, as a chunk of its
own, for whichever process has room (``LlmChunk.run``).
"""

from __future__ import annotations

import threading


class LlmSlots:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._busy = 0
        self._lock = threading.Lock()

    @property
    def busy(self) -> int:
        """Prompts counted against the slots: running, or queued for a thread."""
        with self._lock:
            return self._busy

    def reserve(self, wanted: int) -> int:
        """How many of ``wanted`` prompts may start now; they count until released."""
        with self._lock:
            granted = max(0, min(wanted, self.slots - self._busy))
            self._busy += granted
            return granted

    def hold(self, count: int) -> int:
        """Count ``count`` prompts that run here whatever the room (a forwarded chunk)."""
        with self._lock:
            self._busy += count
            return count

    def release(self, count: int = 1) -> None:
        with self._lock:
            self._busy -= count
