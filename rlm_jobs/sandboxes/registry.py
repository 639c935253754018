"""Sandbox backends by name. Optional ones import lazily, with an install hint."""

from __future__ import annotations

from collections.abc import Callable

from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError
from rlm_jobs.sandboxes.base import SandboxBackend

BackendFactory = Callable[[Settings], SandboxBackend]


def _process(settings: Settings) -> SandboxBackend:
    from rlm_jobs.sandboxes.process import ProcessBackend

    return ProcessBackend(settings, cpus=settings.sandbox_cpus)


def _docker(settings: Settings) -> SandboxBackend:
    try:
        from rlm_jobs.sandboxes.docker import DockerBackend  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ConfigError(
            f"the docker sandbox backend is unavailable ({exc}); install it with "
            "pip install 'docker>=7' and build the sandbox image"
        ) from exc
    backend: SandboxBackend = DockerBackend(settings, cpus=settings.sandbox_cpus)
    return backend


BACKENDS: dict[str, BackendFactory] = {"process": _process, "docker": _docker}


def create_backend(settings: Settings, name: str | None = None) -> SandboxBackend:
    chosen = name or settings.sandbox_backend
    factory = BACKENDS.get(chosen)
    if factory is None:
        raise ConfigError(f"unknown sandbox backend {chosen!r}; choose one of {sorted(BACKENDS)}")
    return factory(settings)
