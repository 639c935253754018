"""Sandbox backends by name. Optional ones import lazily, with an install hint."""

from __future__ import annotations

from collections.abc import Callable

from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError
from rlm_jobs.sandboxes.base import SandboxBackend

BackendFactory = Callable[[Settings], SandboxBackend]


def _process(settings: Settings) -> SandboxBackend:
    from rlm_jobs.sandboxes.backends.process import ProcessBackend

    return ProcessBackend(settings, cpus=settings.sandbox_cpus)


def _docker(settings: Settings) -> SandboxBackend:
    # The Docker SDK itself is imported when the backend is made (ConfigError with a hint).
    from rlm_jobs.sandboxes.backends.docker import DockerBackend

    return DockerBackend(settings, cpus=settings.sandbox_cpus)


BACKENDS: dict[str, BackendFactory] = {"process": _process, "docker": _docker}


def create_backend(settings: Settings, name: str | None = None) -> SandboxBackend:
    chosen = name or settings.sandbox_backend
    factory = BACKENDS.get(chosen)
    if factory is None:
        raise ConfigError(f"unknown sandbox backend {chosen!r}; choose one of {sorted(BACKENDS)}")
    return factory(settings)
