"""Faults tests inject into real parts: a Redis server crashed and restarted on its AOF.

``CrashableRedis`` is a private ``redis-server`` with an append-only file; ``crash()`` kills
it with SIGKILL, as a crashed host or an OOM kill would, and ``restart()`` starts it again
on the same port, directory and password, where it loads the AOF. Clients (workers,
sandboxes, the test's own) see their connections drop and have to find their way back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from rlm_jobs.redis_server import RedisServer

T = TypeVar("T")


def while_redis_is_up(condition: Callable[[], T]) -> Callable[[], T | None]:
    """``condition`` for ``wait_for``, None (not yet) while Redis is still coming back."""

    def check() -> T | None:
        try:
            return condition()
        except redis.RedisError:
            return None

    return check


class CrashableRedis:
    def __init__(self) -> None:
        self.server = RedisServer.start(appendonly=True)
        self.crashes = 0
        # Seconds Redis was unreachable, one entry per crash.
        self.outages_s: list[float] = []

    def crash(self) -> None:
        self.server.kill()
        self.crashes += 1
        self._down_at = time.monotonic()

    def restart(self) -> None:
        self.server.restart()
        self.outages_s.append(time.monotonic() - self._down_at)

    def crash_and_restart(self, down_s: float = 0.0) -> None:
        """SIGKILL the server, keep it down ``down_s`` (the outage is part of the fault,
        not a wait for a condition), then bring it back on its AOF."""
        self.crash()
        threading.Event().wait(down_s)
        self.restart()

    def close(self) -> None:
        self.server.stop()
