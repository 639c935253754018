"""Redis failures as our errors, at the boundary (``with redis_errors("what"): ...``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from rlm_jobs.errors import StorageError


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Redis failures leave here as ``StorageError`` naming what was being done."""
    try:
        yield
    except redis.RedisError as exc:
        raise StorageError(f"{what}: Redis failed: {exc}") from exc
