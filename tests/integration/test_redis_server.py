"""Every Redis we start is capped and never evicts: job data must not silently disappear."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from rlm_jobs.redis_server import PUBSUB_BUFFER_LIMIT, RedisServer

REPO = Path(__file__).resolve().parents[2]


def test_a_started_redis_has_maxmemory_and_refuses_to_evict(redis_client: redis.Redis) -> None:
    config = redis_client.config_get("maxmemory*")
    assert config["maxmemory-policy"] == "noeviction"
    assert int(config["maxmemory"]) > 0
    limits = redis_client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    assert "pubsub 268435456 67108864 60" in limits


def test_a_full_redis_refuses_writes_and_keeps_what_it_has() -> None:
    server = RedisServer.start(maxmemory_bytes=8 * 1024 * 1024)
    client = redis.Redis.from_url(server.url)
    try:
        client.set("first", "kept")
        written = 0
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(64):  # 64 MB into an 8 MB Redis
                client.set(f"filler:{i}", b"x" * (1 << 20))
                written += 1
        assert written < 16
        assert client.get("first") == b"kept"  # nothing was evicted to make room
    finally:
        client.close()
        server.stop()


def test_the_compose_redis_has_maxmemory_and_noeviction() -> None:
    lines = [
        line.split("#", 1)[0].split()
        for line in (REPO / "ops" / "redis.conf").read_text().splitlines()
    ]
    settings = {words[0]: words[1:] for words in lines if words}
    assert settings["maxmemory-policy"] == ["noeviction"]
    assert settings["maxmemory"] and settings["maxmemory"][0] != "0"
    assert settings["client-output-buffer-limit"] == PUBSUB_BUFFER_LIMIT.split()
