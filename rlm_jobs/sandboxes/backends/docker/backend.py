"""The docker backend: one locked-down container per sandbox (``container``).

Each sandbox runs ``settings.docker_image`` (``python -m sandbox.runtime``, built from
``sandbox/Dockerfile``); the constructor checks the image is there. The bootstrap is
rewritten to the in-container socket path (``socket_mount``) and written to the runtime's
stdin over an attach socket, so the Redis password never shows in ``docker inspect``, argv
or the environment.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError, SandboxError
from rlm_jobs.sandboxes.backends.docker import sdk
from rlm_jobs.sandboxes.backends.docker.container import container_args
from rlm_jobs.sandboxes.backends.docker.sandbox import DockerSandbox
from rlm_jobs.sandboxes.backends.docker.socket_mount import SocketMount, find_socket_mount
from sandbox.wire import Bootstrap

# One core per sandbox: model code is mostly waiting on sub-calls, a busy loop gets one core.
DEFAULT_CPUS = 1.0


class DockerBackend:
    """Runs each sandbox as a container of ``settings.docker_image``.

    ``client`` is a ``docker.DockerClient``; by default one for the local daemon. The
    constructor fails with ConfigError when no daemon answers or the image is missing.
    """

    name = "docker"

    def __init__(
        self, settings: Settings, *, client: Any = None, cpus: float = DEFAULT_CPUS
    ) -> None:
        self._settings = settings
        self._docker = sdk.docker_sdk()
        self._api_errors = sdk.api_errors()
        self._client = client if client is not None else sdk.connect(settings)
        self._cpus = cpus
        self._mounts: dict[str, SocketMount] = {}
        self._mounts_lock = threading.Lock()
        self._require_image(settings.docker_image)

    def _require_image(self, image: str) -> None:
        try:
            self._client.images.get(image)
        except self._api_errors as exc:
            if sdk.is_not_found(exc):
                raise ConfigError(
                    f"the sandbox image {image!r} is not built; build it with "
                    "ops/build-images.sh sandbox (or set RLM_JOBS_DOCKER_IMAGE)"
                ) from exc
            raise ConfigError(f"cannot inspect the sandbox image: {exc}") from exc

    def launch(self, bootstrap: Bootstrap) -> DockerSandbox:
        host_socket = bootstrap.redis_unix_socket or self._settings.sandbox_redis_socket
        if not host_socket:
            raise ConfigError(
                "docker sandboxes have no network: they need Redis's Unix socket "
                "(RLM_JOBS_SANDBOX_REDIS_SOCKET)"
            )
        socket_mount = self._socket_mount(host_socket)
        boot = bootstrap.replace(
            redis_unix_socket=socket_mount.path_in_sandbox,
            redis_host=None,
            redis_port=None,
        )
        args = container_args(
            self._docker.types,
            self._settings,
            boot,
            socket_mount=socket_mount.mount,
            cpus=self._cpus,
        )
        try:
            container = self._client.containers.create(**args)
        except self._api_errors as exc:
            raise SandboxError(f"could not create the sandbox container: {exc}") from exc
        sandbox = DockerSandbox(
            container, memory_mb=self._settings.sandbox_memory_mb, api_errors=self._api_errors
        )
        try:
            self._start_with_stdin(container, boot.to_json().encode() + b"\n")
        except self._api_errors as exc:
            with contextlib.suppress(SandboxError):
                sandbox.kill()
            raise SandboxError(
                f"could not start the sandbox container: {exc}; {sandbox.describe_exit()}"
            ) from exc
        except BaseException:
            with contextlib.suppress(SandboxError):
                sandbox.kill()
            raise
        return sandbox

    def _start_with_stdin(self, container: Any, line: bytes) -> None:
        """Attach to stdin, start, write the bootstrap line, detach (closing its stdin)."""
        attached = container.attach_socket(params={"stdin": 1, "stream": 1})
        raw: socket.socket = getattr(attached, "_sock", attached)
        try:
            raw.settimeout(sdk.API_TIMEOUT_S)
            container.start()
            raw.sendall(line)
        finally:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
            attached.close()
            raw.close()

    def _socket_mount(self, host_socket: str) -> SocketMount:
        with self._mounts_lock:
            known = self._mounts.get(host_socket)
            if known is None:
                known = find_socket_mount(
                    self._client, self._docker.types, self._api_errors, host_socket
                )
                self._mounts[host_socket] = known
            return known
