"""The docker backend: one locked-down container per sandbox.

Each sandbox runs ``settings.docker_image`` (``python -m sandbox.runtime``, built from
``sandbox/Dockerfile``) with no network, a read-only root file system, size-limited tmpfs
for ``/scratch`` and ``/tmp``, memory (swap included), CPU and process limits, a non-root
uid, no capabilities, ``no-new-privileges`` and only the image's environment. Its one way
out is the Redis Unix socket, mounted read-only as a single file (the socket's directory
may hold Redis's data files); the bootstrap is rewritten to the in-container path and
written to the runtime's stdin over an attach socket, so the Redis password never shows in
``docker inspect``, argv or the environment.

Containers carry labels naming the sandbox and the process that launched it;
``reap_orphans`` removes those whose launching process is gone (call it at worker start).
The Docker SDK is imported lazily; its exceptions become ``SandboxError``/``ConfigError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import stat
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError, SandboxError
from sandbox.wire import Bootstrap

log = logging.getLogger(__name__)

__all__ = [
    "OWNER_CONTAINER_LABEL",
    "OWNER_LABEL",
    "SANDBOX_LABEL",
    "DockerBackend",
    "DockerSandbox",
    "reap_orphans",
]

# Label keys on every sandbox container: its sandbox id, and who launched it.
SANDBOX_LABEL = "rlm-jobs.sandbox"
# "<boot id>/<pid namespace inode>/<pid>/<process start time>" of the launching process.
OWNER_LABEL = "rlm-jobs.owner"
# The container the launching process ran in, when it ran in one (compose deployments).
OWNER_CONTAINER_LABEL = "rlm-jobs.owner-container"

# The uid:gid the image creates for the runtime; never root.
SANDBOX_USER = "10001:10001"
# Where the Redis socket appears inside a sandbox (the image creates the directory).
SOCKET_DIR_IN_SANDBOX = "/run/rlm-redis"
# The runtime's working directory and home: a tmpfs, like /tmp.
SCRATCH_DIR = "/scratch"
# One core per sandbox: model code is mostly waiting on sub-calls, a busy loop gets one core.
DEFAULT_CPUS = 1.0
# Open files per sandbox: plenty for Python and Redis, not enough to exhaust the host.
MAX_OPEN_FILES = 1024
# Every Docker API call; a container start on a loaded host takes a few seconds at most.
API_TIMEOUT_S = 30.0
# Connections to the daemon: alive() polls of many concurrent sandboxes share the pool.
API_POOL_SIZE = 32
# The runtime's own stdout/stderr kept by Docker: enough for a traceback, bounded for spam.
LOG_MAX_SIZE = "1m"
# Lines of the runtime's log that describe_exit quotes.
LOG_TAIL_LINES = 20
LOG_TAIL_CHARS = 2000

_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
# A container's /etc/hostname is bound from /var/lib/docker/containers/<id>/hostname.
_MOUNT_ROOT_ID = re.compile(r"/containers/([0-9a-f]{64})/")
# cgroup v1 paths: /docker/<id> (cgroupfs driver) or docker-<id>.scope (systemd driver).
_CGROUP_ID = re.compile(r"/docker[/-]([0-9a-f]{64})")


def _docker_sdk() -> Any:
    try:
        import docker
    except ImportError as exc:
        raise ConfigError(
            "the docker sandbox backend needs the Docker SDK: pip install 'docker>=7'"
        ) from exc
    return docker


def _api_errors() -> tuple[type[BaseException], ...]:
    """Everything the SDK raises for a failed call: its own errors and requests' errors."""
    import requests

    return (_docker_sdk().errors.DockerException, requests.RequestException, OSError)


def connect(settings: Settings) -> Any:
    """A Docker client for the daemon named by the usual DOCKER_HOST / default socket.

    Raises ConfigError when the SDK is missing or no daemon answers.
    """
    docker = _docker_sdk()
    try:
        client = docker.from_env(timeout=int(API_TIMEOUT_S), max_pool_size=API_POOL_SIZE)
        client.ping()
    except _api_errors() as exc:
        raise ConfigError(
            f"no Docker engine answers ({exc}); start one (as root: ops/start-dockerd.sh) "
            "or choose RLM_JOBS_SANDBOX_BACKEND=process"
        ) from exc
    return client


# ---- who launched a container -----------------------------------------------------------


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _pid_namespace() -> str:
    link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    return link.partition("[")[2].rstrip("]")


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot; tells a reused pid apart."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces and parentheses.
    return raw.rpartition(")")[2].split()[19]


def _own_container_id() -> str | None:
    """The id of the Docker container this process runs in, if any."""
    if not Path("/.dockerenv").exists():
        return None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4] in ("/etc/hostname", "/etc/resolv.conf"):
                match = _MOUNT_ROOT_ID.search(fields[3])
                if match:
                    return match.group(1)
    with contextlib.suppress(OSError):
        match = _CGROUP_ID.search(Path("/proc/self/cgroup").read_text())
        if match:
            return match.group(1)
    return None


@dataclass(frozen=True)
class Owner:
    boot_id: str
    pid_namespace: str
    pid: int
    start_ticks: str

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(_boot_id(), _pid_namespace(), pid, _start_ticks(pid) or "?")

    @classmethod
    def parse(cls, label: str) -> Owner | None:
        parts = label.split("/")
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3])

    def label(self) -> str:
        return f"{self.boot_id}/{self.pid_namespace}/{self.pid}/{self.start_ticks}"


# ---- one sandbox -------------------------------------------------------------------------


class DockerSandbox:
    """A started sandbox container; ``kill`` removes it (safe to call twice)."""

    def __init__(
        self, container: Any, *, memory_mb: int, api_errors: tuple[type[BaseException], ...]
    ) -> None:
        self._container = container
        self._memory_mb = memory_mb
        self._api_errors = api_errors
        self._lock = threading.Lock()
        self._killed_by_us = False
        self._released = False
        self._final_state: dict[str, Any] = {}
        self._final_logs = ""

    @property
    def container_id(self) -> str:
        return str(self._container.id)

    @property
    def name(self) -> str:
        return str(self._container.name)

    def alive(self) -> bool:
        if self._released:
            return False
        state = self._state()
        return bool(state.get("Running")) or state.get("Status") == "created"

    def kill(self) -> None:
        with self._lock:
            if self._released:
                return
            state = self._state()
            if state.get("Running"):
                self._killed_by_us = True
            self._final_logs = self._logs_tail()
            try:
                # force: SIGKILL first if running; the container's tmpfs go with it.
                self._container.remove(force=True)
            except self._api_errors as exc:
                if not _is_not_found(exc):
                    raise SandboxError(
                        f"could not remove sandbox container {self.name}: {exc}"
                    ) from exc
            # What it was when we removed it; a running one was killed by us.
            self._final_state = {**state, "Running": False, "Status": "removed"} if state else {}
            self._released = True

    def describe_exit(self) -> str:
        state = self._final_state if self._released else self._state()
        if not state:
            return f"container {self.name} is gone"
        if state.get("Running") or state.get("Status") == "created":
            return f"container {self.name} is still running"
        code = state.get("ExitCode")
        if state.get("OOMKilled"):
            how = f"killed: out of memory (limit {self._memory_mb} MB)"
        elif self._killed_by_us:
            how = "killed by the orchestrator"
        elif isinstance(code, int) and 128 < code < 128 + signal.NSIG:
            # tini (pid 1) exits with 128 + the signal that ended the runtime.
            how = f"killed by {_signal_name(code - 128)}"
        else:
            how = f"exited with code {code}"
        if state.get("Error"):
            how += f" ({state['Error']})"
        tail = self._final_logs if self._released else self._logs_tail()
        return f"{how}; runtime log: {tail.strip()!r}" if tail.strip() else how

    def _state(self) -> dict[str, Any]:
        try:
            self._container.reload()
        except self._api_errors as exc:
            if _is_not_found(exc):
                return {}
            raise SandboxError(f"cannot inspect sandbox container {self.name}: {exc}") from exc
        return dict(self._container.attrs.get("State") or {})

    def _logs_tail(self) -> str:
        try:
            raw = self._container.logs(stdout=True, stderr=True, tail=LOG_TAIL_LINES)
        except self._api_errors:
            return ""
        return bytes(raw).decode("utf-8", "replace")[-LOG_TAIL_CHARS:]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, _docker_sdk().errors.NotFound)


# ---- the backend -------------------------------------------------------------------------


@dataclass(frozen=True)
class _SocketMount:
    mount: Any  # docker.types.Mount
    path_in_sandbox: str


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
        self._docker = _docker_sdk()
        self._api_errors = _api_errors()
        self._client = client if client is not None else connect(settings)
        self._cpus = cpus
        self._mounts: dict[str, _SocketMount] = {}
        self._mounts_lock = threading.Lock()
        try:
            self._client.images.get(settings.docker_image)
        except self._api_errors as exc:
            if _is_not_found(exc):
                raise ConfigError(
                    f"the sandbox image {settings.docker_image!r} is not built; build it with "
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
        boot = dataclasses.replace(
            bootstrap,
            redis_unix_socket=socket_mount.path_in_sandbox,
            redis_host=None,
            redis_port=None,
        )
        try:
            container = self._client.containers.create(**self._container_args(boot, socket_mount))
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

    def _container_args(self, boot: Bootstrap, socket_mount: _SocketMount) -> dict[str, Any]:
        settings = self._settings
        types = self._docker.types
        memory = f"{settings.sandbox_memory_mb}m"
        scratch = f"size={settings.sandbox_scratch_mb}m,noexec,nosuid,nodev"
        return {
            "image": settings.docker_image,
            "name": "rlm-sbx-" + _NAME_UNSAFE.sub("-", boot.sandbox_id)[:48],
            "labels": {
                SANDBOX_LABEL: boot.sandbox_id,
                OWNER_LABEL: Owner.current().label(),
                **({OWNER_CONTAINER_LABEL: own} if (own := _own_container_id()) else {}),
            },
            # The bootstrap arrives on stdin, which closes when our attach ends.
            "stdin_open": True,
            "detach": False,
            "tty": False,
            # Only the image's environment (PATH, HOME, LANG): no proxies from the CLI config.
            "environment": {},
            "use_config_proxy": False,
            "user": SANDBOX_USER,
            "working_dir": SCRATCH_DIR,
            "hostname": "sandbox",
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {
                SCRATCH_DIR: f"{scratch},uid=10001,gid=10001,mode=0700",
                "/tmp": f"{scratch},mode=1777",
            },
            "mounts": [socket_mount.mount],
            "mem_limit": memory,
            "memswap_limit": memory,  # equal: no swap on top of the memory limit
            "nano_cpus": int(self._cpus * 1e9),
            "pids_limit": settings.sandbox_max_processes,
            "ulimits": [
                types.Ulimit(name="nofile", soft=MAX_OPEN_FILES, hard=MAX_OPEN_FILES),
                types.Ulimit(name="core", soft=0, hard=0),
            ],
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "ipc_mode": "private",
            # tini as pid 1: reaps zombies of model-started processes, forwards signals.
            "init": True,
            "log_config": types.LogConfig(
                type="json-file", config={"max-size": LOG_MAX_SIZE, "max-file": "1"}
            ),
        }

    def _start_with_stdin(self, container: Any, line: bytes) -> None:
        """Attach to stdin, start, write the bootstrap line, detach (closing its stdin)."""
        attached = container.attach_socket(params={"stdin": 1, "stream": 1})
        raw: socket.socket = getattr(attached, "_sock", attached)
        try:
            raw.settimeout(API_TIMEOUT_S)
            container.start()
            raw.sendall(line)
        finally:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
            attached.close()
            raw.close()

    def _socket_mount(self, host_socket: str) -> _SocketMount:
        with self._mounts_lock:
            known = self._mounts.get(host_socket)
            if known is None:
                known = self._mounts[host_socket] = self._find_socket_mount(host_socket)
            return known

    def _find_socket_mount(self, host_socket: str) -> _SocketMount:
        try:
            mode = os.stat(host_socket).st_mode
        except OSError as exc:
            raise ConfigError(f"the Redis socket {host_socket} does not exist: {exc}") from exc
        if not stat.S_ISSOCK(mode):
            raise ConfigError(f"{host_socket} is not a Unix socket")
        if _answers_without_auth(host_socket):
            # Every sandbox could connect without its ACL user and act as Redis's default
            # user: every job's data, ACL and CONFIG commands.
            raise ConfigError(
                f"Redis at {host_socket} answers without a password, so sandboxes could "
                "bypass their ACL users; give the default user a password (requirepass)"
            )
        mount_type = self._docker.types.Mount
        own = _own_container_id()
        if own is None:
            # The daemon sees our file system: bind the socket file alone, read-only
            # (connecting needs no write access to the mount; its siblings stay hidden).
            target = f"{SOCKET_DIR_IN_SANDBOX}/{os.path.basename(host_socket)}"
            mount = mount_type(target, host_socket, type="bind", read_only=True)
            return _SocketMount(mount, target)
        # We run in a container: the daemon resolves paths on its host, so translate the
        # socket's path through our own mounts (a named volume in compose.yaml).
        try:
            mounts = self._client.api.inspect_container(own).get("Mounts") or []
        except self._api_errors as exc:
            raise ConfigError(f"cannot inspect this container ({own[:12]}): {exc}") from exc
        for m in sorted(mounts, key=lambda m: len(str(m.get("Destination", ""))), reverse=True):
            dest = str(m.get("Destination", "")).rstrip("/")
            if not host_socket.startswith(dest + "/"):
                continue
            rel = os.path.relpath(host_socket, dest)
            if m.get("Type") == "volume":
                target = f"{SOCKET_DIR_IN_SANDBOX}/{rel}"
                mount = mount_type(SOCKET_DIR_IN_SANDBOX, m["Name"], type="volume", read_only=True)
                return _SocketMount(mount, target)
            if m.get("Type") == "bind":
                target = f"{SOCKET_DIR_IN_SANDBOX}/{os.path.basename(host_socket)}"
                source = os.path.join(str(m["Source"]), rel)
                mount = mount_type(target, source, type="bind", read_only=True)
                return _SocketMount(mount, target)
        raise ConfigError(
            f"the Redis socket {host_socket} is not on a volume or bind mount of this "
            f"container ({own[:12]}), so sandbox containers cannot be given it"
        )


def _answers_without_auth(socket_path: str) -> bool:
    """Whether Redis on this socket runs commands for a client that never authenticated."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2.0)
            conn.connect(socket_path)
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# ---- orphans -----------------------------------------------------------------------------


def reap_orphans(settings: Settings, *, client: Any = None) -> list[str]:
    """Remove sandbox containers whose launching process is gone; return their sandbox ids.

    Call at worker start (and from time to time): a worker that died without cleaning up
    leaves its sandboxes running. A container launched in another pid namespace is judged
    by its owner container (gone, stopped or restarted since means orphaned); one whose
    owner cannot be judged from here is left alone.
    """
    client = client if client is not None else connect(settings)
    errors = _api_errors()
    me = Owner.current()
    try:
        containers = client.containers.list(all=True, filters={"label": SANDBOX_LABEL})
    except errors as exc:
        raise SandboxError(f"cannot list sandbox containers: {exc}") from exc
    reaped: list[str] = []
    for container in containers:
        labels = container.labels or {}
        if _owner_alive(client, errors, me, labels, str(container.attrs.get("Created", ""))):
            continue
        sandbox_id = str(labels.get(SANDBOX_LABEL, ""))
        try:
            container.remove(force=True)
        except errors as exc:
            if not _is_not_found(exc):
                log.warning("could not remove orphaned sandbox %s: %s", container.name, exc)
                continue
        log.info("removed orphaned sandbox container %s (%s)", container.name, sandbox_id)
        reaped.append(sandbox_id)
    return reaped


def _owner_alive(
    client: Any,
    errors: tuple[type[BaseException], ...],
    me: Owner,
    labels: dict[str, str],
    created: str,
) -> bool:
    owner = Owner.parse(labels.get(OWNER_LABEL, ""))
    if owner is None:
        return False  # ours by its sandbox label, but unaccountable: nobody will clean it
    if owner.boot_id != me.boot_id:
        return False  # launched before the last reboot
    if owner.pid_namespace == me.pid_namespace:
        return _start_ticks(owner.pid) == owner.start_ticks
    owner_container = labels.get(OWNER_CONTAINER_LABEL)
    if not owner_container:
        return True  # another pid namespace we cannot look into
    try:
        state = client.api.inspect_container(owner_container).get("State") or {}
    except errors as exc:
        if _is_not_found(exc):
            return False
        raise SandboxError(f"cannot inspect container {owner_container[:12]}: {exc}") from exc
    if not state.get("Running"):
        return False
    # Restarted after the sandbox was made: the process that made it is gone.
    started, made = _docker_time(state.get("StartedAt", "")), _docker_time(created)
    return started is None or made is None or started <= made


def _docker_time(text: str) -> datetime | None:
    """Docker's RFC 3339 timestamps carry nanoseconds; datetime takes microseconds."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not match:
        return None
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + fraction + zone)
