"""Contexts stored once in Redis, content-addressed, referred to by ``ContextRef``.

A context is serialised as JSON (the sandbox runtime decodes it with ``json.loads``), so a
``str``, a ``list[str]`` and JSON-like ``dict``/``list`` values all round-trip.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis

from rlm_jobs import keys
from rlm_jobs.errors import SpecError, StorageError
from rlm_jobs.models import ContextRef

ContextValue = str | list[Any] | dict[str, Any]


def _total_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(k)) + _total_chars(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_total_chars(v) for v in value)
    return len(str(value))


def describe(value: ContextValue) -> tuple[str, int, int]:
    if isinstance(value, str):
        return "str", len(value), len(value)
    if isinstance(value, list):
        return "list", len(value), _total_chars(value)
    if isinstance(value, dict):
        return "dict", len(value), _total_chars(value)
    raise SpecError(f"a context must be str, list or dict, not {type(value).__name__}")


def put_context(
    client: redis.Redis, value: ContextValue, *, ttl_s: int = keys.RESULT_TTL_S
) -> ContextRef:
    """Store a context (once per distinct content) and return its reference."""
    kind, length, total = describe(value)
    try:
        blob = json.dumps(value, ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise SpecError(f"context is not JSON-serialisable: {exc}") from exc
    sha = hashlib.sha256(blob).hexdigest()
    key = keys.context_blob(sha)
    # SET NX + EXPIRE: identical contexts cost one write, and each use extends the lifetime.
    if not client.set(key, blob, ex=ttl_s, nx=True):
        client.expire(key, ttl_s)
    return ContextRef.model_validate(
        {"sha256": sha, "kind": kind, "length": length, "total_chars": total}
    )


def get_context(client: redis.Redis, ref: ContextRef) -> ContextValue:
    """Load a context back (orchestrators avoid this: only sandboxes need the value)."""
    blob = client.get(keys.context_blob(ref.sha256))
    if blob is None:
        raise StorageError(f"context {ref.sha256[:12]} is not in Redis (expired or never stored)")
    value: ContextValue = json.loads(blob)
    return value
