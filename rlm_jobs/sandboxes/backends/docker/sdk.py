"""The Docker SDK, imported lazily, and its failures in one tuple.

Its exceptions become ``SandboxError``/``ConfigError`` where they are caught; nothing of
the SDK's leaks past this package.
"""

from __future__ import annotations

from typing import Any

from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError

# Every Docker API call; a container start on a loaded host takes a few seconds at most.
API_TIMEOUT_S = 30.0
# Connections to the daemon: alive() polls of many concurrent sandboxes share the pool.
API_POOL_SIZE = 32


def docker_sdk() -> Any:
    try:
        import docker
    except ImportError as exc:
        raise ConfigError(
            "the docker sandbox backend needs the Docker SDK: pip install 'docker>=7'"
        ) from exc
    return docker


def api_errors() -> tuple[type[BaseException], ...]:
    """Everything the SDK raises for a failed call: its own errors and requests' errors."""
    import requests

    return (docker_sdk().errors.DockerException, requests.RequestException, OSError)


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, docker_sdk().errors.NotFound)


def connect(settings: Settings) -> Any:
    """A Docker client for the daemon named by the usual DOCKER_HOST / default socket.

    Raises ConfigError when the SDK is missing or no daemon answers.
    """
    docker = docker_sdk()
    try:
        client = docker.from_env(timeout=int(API_TIMEOUT_S), max_pool_size=API_POOL_SIZE)
        client.ping()
    except api_errors() as exc:
        raise ConfigError(
            f"no Docker engine answers ({exc}); start one (as root: ops/start-dockerd.sh) "
            "or choose RLM_JOBS_SANDBOX_BACKEND=process"
        ) from exc
    return client
