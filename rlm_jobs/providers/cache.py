"""The shared response cache: an exact request answered before is answered from Redis.

A request is its model, its messages (role and text, in order) and the parameters that
change the answer (``max_output_tokens``); the key is the SHA-256 of their canonical JSON.
A reply is stored under ``keys.cache_entry(digest)`` with a TTL (``cache_ttl_s``) and
indexed by when it was stored; ``lua/cache_put.lua`` keeps the bytes of all replies under
``cache_max_bytes`` by evicting the oldest, because our Redis runs ``noeviction`` and
would otherwise refuse writes once full. Only successful completions are cached.

Off unless a job or batch asks (``Limits.cache``, ``--cache``) or the deployment says so
(``RLM_JOBS_CACHE=true``): a cached answer is right only when the caller wants the same
answer again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlm_jobs import keys
from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.redis_errors import redis_errors
from rlm_jobs.scripts import source

__all__ = ["CachedReply", "ResponseCache", "request_digest"]


class CachedReply(BaseModel):
    """What a cache entry holds: the completion, as the provider gave it."""

    model_config = ConfigDict(extra="forbid")

    text: str
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)


def request_digest(model_name: str, messages: Sequence[ChatMessage], max_output_tokens: int) -> str:
    request = {
        "model": model_name,
        "messages": [[m["role"], m["content"]] for m in messages],
        "max_output_tokens": max_output_tokens,
    }
    canonical = json.dumps(request, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int


class ResponseCache:
    def __init__(self, client: redis.Redis, *, ttl_s: float, max_bytes: int) -> None:
        self._client = client
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._max_bytes = max_bytes
        self._put = client.register_script(source("cache_put"))

    def get(self, digest: str) -> CachedReply | None:
        with redis_errors("reading the response cache"):
            raw = self._client.get(keys.cache_entry(digest))
        if raw is None:
            return None
        try:
            return CachedReply.model_validate_json(raw)
        except ValidationError:  # not ours, or from an incompatible version: a miss
            return None

    def put(
        self,
        digest: str,
        reply: CachedReply,
        client: redis.Redis | redis.client.Pipeline | None = None,
    ) -> None:
        """Store ``reply``; ``client`` may be a pipeline (the call's other bookkeeping)."""
        with redis_errors("writing the response cache"):
            self._put(
                keys=[keys.cache_entry(digest), keys.cache_index(), keys.cache_sizes()],
                args=[
                    digest,
                    reply.model_dump_json(),
                    self._ttl_ms,
                    self._max_bytes,
                    keys.cache_entry(""),
                ],
                client=client,
            )

    def stats(self) -> CacheStats:
        with redis_errors("reading the response cache's size"):
            pipe = self._client.pipeline(transaction=False)
            pipe.zcard(keys.cache_index())
            pipe.hget(keys.cache_sizes(), "total")
            entries, total = pipe.execute()
        return CacheStats(entries=int(entries), bytes=int(total or 0))
