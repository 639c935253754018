"""Session fixtures: a real redis-server of our own, flushed between tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from rlm_jobs.redis_server import RedisServer
from tests.support.faults import CrashableRedis


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Docker tests never skip on their own (a missing engine fails them, loudly); turning
    # them off takes this explicit switch, which CI does not set.
    if item.get_closest_marker("docker") and os.environ.get("RLM_JOBS_TEST_DOCKER") == "0":
        pytest.skip("Docker tests disabled explicitly with RLM_JOBS_TEST_DOCKER=0")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    # ACL users made by earlier tests would otherwise accumulate.
    for user in client.acl_users():
        if user != "default":
            client.acl_deluser(user)
    yield client
    client.close()


@pytest.fixture
def crashable_redis() -> Iterator[CrashableRedis]:
    """A redis-server of this test's own, with an AOF, that the test may crash and restart."""
    crashable = CrashableRedis()
    yield crashable
    crashable.close()
