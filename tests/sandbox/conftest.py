"""Fixtures for real sandboxes: settings pointing at the test Redis, sessions that clean up."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rlm_jobs.config import Settings
from rlm_jobs.contexts import put_context
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.sandboxes.registry import create_backend
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.session import SandboxSession
from tests.support import MakeServices, OpenSession, answer_from_text

# Every backend must pass the contract suite; the docker backend joins with
# pytest.param("docker", marks=pytest.mark.docker).
BACKENDS = ["process", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        sandbox_redis_socket=redis_server.unix_socket,
        sandbox_start_timeout_s=30,
        sandbox_memory_mb=1024,
    )


@pytest.fixture
def make_services(redis_client: redis.Redis) -> Iterator[MakeServices]:
    """Builds what a process's sandboxes share, for given settings; closes them at the end."""
    made: list[SandboxServices] = []

    def make(settings: Settings) -> SandboxServices:
        services = SandboxServices(redis_client, settings)
        made.append(services)
        return services

    yield make
    for services in made:
        services.close()


@pytest.fixture
def services(make_services: MakeServices, settings: Settings) -> SandboxServices:
    return make_services(settings)


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_session(
    redis_client: redis.Redis, services: SandboxServices, settings: Settings, backend_name: str
) -> Iterator[OpenSession]:
    """Opens sessions over a context; closes them all at the end of the test."""
    backend = create_backend(settings, backend_name)
    opened: list[SandboxSession] = []

    def open_(
        context: Any = "hello world", handler: Any = answer_from_text, **kw: Any
    ) -> SandboxSession:
        ref = put_context(redis_client, context)
        session = SandboxSession(services, backend, ref, handler, **kw)
        opened.append(session)
        return session

    yield open_
    for session in opened:
        session.close()
