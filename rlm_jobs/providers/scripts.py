"""The provider controls' Lua scripts (``lua/*.lua``), and Redis failures as our errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

import redis
from redis.commands.core import Script

from rlm_jobs.errors import StorageError

__all__ = ["load_script", "redis_errors"]


def load_script(client: redis.Redis, name: str) -> Script:
    """``lua/<name>.lua``, registered with ``client`` (sent by SHA, loaded on first use)."""
    text = resources.files("rlm_jobs.providers").joinpath("lua", f"{name}.lua").read_text()
    return client.register_script(text)


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Redis failures leave here as ``StorageError`` naming what was being done."""
    try:
        yield
    except redis.RedisError as exc:
        raise StorageError(f"{what}: Redis failed: {exc}") from exc
