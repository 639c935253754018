"""Fixtures for real sandboxes: settings pointing at the test Redis, sessions that clean up."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from rlm_jobs.config import Settings
from rlm_jobs.contexts import put_context
from rlm_jobs.errors import ConfigError
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.sandboxes.registry import create_backend
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.session import SandboxSession
from sandbox.records import SubcallResult
from sandbox.wire import SubcallRequest

# Every backend must pass the contract suite; the docker backend joins with
# pytest.param("docker", marks=pytest.mark.docker).
BACKENDS = ["process", pytest.param("docker", marks=pytest.mark.docker)]

_DOCKER_HINT = (
    "start Docker with `sudo ops/start-dockerd.sh` and build the image with "
    "`ops/build-images.sh sandbox`, or set RLM_JOBS_TEST_DOCKER=0 to skip these tests"
)


def connect_docker_or_fail() -> Any:
    """A client of a running engine that has the sandbox image; fails the test otherwise.

    Docker tests never skip quietly: a missing engine or image is a failure with a hint.
    """
    from rlm_jobs.sandboxes.backends import docker as docker_backend

    settings = Settings()
    try:
        client = docker_backend.connect(settings)
    except ConfigError as exc:
        pytest.fail(f"Docker tests cannot run: {exc}. {_DOCKER_HINT}", pytrace=False)
    try:
        client.images.get(settings.docker_image)
    except Exception as exc:
        client.close()
        pytest.fail(
            f"Docker tests cannot run: image {settings.docker_image!r}: {exc}. {_DOCKER_HINT}",
            pytrace=False,
        )
    return client


def answer_from_text(request: SubcallRequest) -> list[SubcallResult]:
    """A stand-in for the LLM dispatcher: answers follow from the prompt text.

    ``fail...`` fails its slot; ``sleep:<s>:...`` answers after ``s`` seconds, so
    parallel batches and out-of-order completion can be observed.
    """
    outcomes = []
    for prompt in request.prompts:
        if prompt.startswith("sleep:"):
            _, seconds, _ = prompt.split(":", 2)
            time.sleep(float(seconds))
        if prompt.startswith("fail"):
            outcomes.append(SubcallResult(ok=False, text=f"Error: refused {prompt!r}"))
        else:
            text = f"{request.kind}/{request.model or 'default'}: {prompt.upper()}"
            outcomes.append(SubcallResult(ok=True, text=text))
    return outcomes


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        sandbox_redis_socket=redis_server.unix_socket,
        sandbox_start_timeout_s=30,
        sandbox_memory_mb=1024,
    )


MakeServices = Callable[[Settings], SandboxServices]


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


OpenSession = Callable[..., SandboxSession]


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
