"""Sandbox starts of one process, at most ``sandbox_start_concurrency`` at once."""

from __future__ import annotations

import threading
from collections import deque


class StartSlots:
    """At most ``limit`` sandbox starts at once in this process; jobs before pool refills.

    A start is CPU-bound (a fresh interpreter, or a container, getting going): a burst that
    starts everything at once slows every start down and the first jobs wait as long as the
    last. A job queues for a slot in arrival order (``acquire``); a pool refill takes only a
    slot that is free while no job waits (``try_acquire``), so refills never delay a job. A
    slot is held from the launch until the runtime says Ready or the start fails; a freed
    slot goes straight to the oldest waiting job.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._free = limit
        self._waiting: deque[threading.Event] = deque()

    def acquire(self) -> StartSlot:
        """Wait for a slot, behind the jobs that asked earlier."""
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return StartSlot(self)
            handed = threading.Event()
            self._waiting.append(handed)
        try:
            handed.wait()
        except BaseException:
            with self._lock:
                if handed.is_set():
                    self._hand_on()  # it was ours already: the next in line gets it
                else:
                    self._waiting.remove(handed)
            raise
        return StartSlot(self)

    @property
    def waiting(self) -> int:
        """Jobs queued for a slot right now."""
        with self._lock:
            return len(self._waiting)

    def try_acquire(self) -> StartSlot | None:
        """A slot if one is free and no job is waiting for one (pool refills), else None."""
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return StartSlot(self)
            return None

    def _release(self, slot: StartSlot) -> None:
        with self._lock:
            if slot.held:
                slot.held = False
                self._hand_on()

    def _hand_on(self) -> None:
        """Called with the lock held: a freed slot goes to the oldest waiter, or is free."""
        if self._waiting:
            self._waiting.popleft().set()
        else:
            self._free += 1


class StartSlot:
    """One start's right to run; ``release`` is safe to call more than once."""

    def __init__(self, slots: StartSlots) -> None:
        self._slots = slots
        self.held = True

    def release(self) -> None:
        self._slots._release(self)
