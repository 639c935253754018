"""One helper object per Redis server connection pool, shared by the whole process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import redis

T = TypeVar("T")


class PerPool(Generic[T]):
    """Makes one ``T`` per connection pool on first use (hubs, janitors)."""

    def __init__(self, make: Callable[[redis.Redis], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        # The pool is kept beside its object so its id cannot be reused by another pool.
        self._made: dict[int, tuple[redis.ConnectionPool, T]] = {}

    def get(self, client: redis.Redis) -> T:
        pool = client.connection_pool
        with self._lock:
            entry = self._made.get(id(pool))
            if entry is None or entry[0] is not pool:
                entry = (pool, self._make(client))
                self._made[id(pool)] = entry
            return entry[1]

    def all(self) -> list[T]:
        with self._lock:
            return [made for _, made in self._made.values()]
