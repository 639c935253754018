"""How a sandbox container gets Redis's Unix socket, and nothing beside it.

Mounted read-only as a single file (the socket's directory may hold Redis's data files).
When this process itself runs in a container, the daemon resolves paths on its own host,
so the socket's path is translated through this container's mounts (a named volume in
compose.yaml). A socket that answers without a password is refused: every sandbox could
skip its ACL user and act as Redis's default user.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from typing import Any

from rlm_jobs.errors import ConfigError
from rlm_jobs.sandboxes.backends.docker.owner import own_container_id

# Where the Redis socket appears inside a sandbox (the image creates the directory).
SOCKET_DIR_IN_SANDBOX = "/run/rlm-redis"


@dataclass(frozen=True)
class SocketMount:
    mount: Any  # docker.types.Mount
    path_in_sandbox: str


def find_socket_mount(
    client: Any, docker_types: Any, api_errors: tuple[type[BaseException], ...], host_socket: str
) -> SocketMount:
    try:
        mode = os.stat(host_socket).st_mode
    except OSError as exc:
        raise ConfigError(f"the Redis socket {host_socket} does not exist: {exc}") from exc
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{host_socket} is not a Unix socket")
    if answers_without_auth(host_socket):
        raise ConfigError(
            f"Redis at {host_socket} answers without a password, so sandboxes could "
            "bypass their ACL users; give the default user a password (requirepass)"
        )
    mount_type = docker_types.Mount
    own = own_container_id()
    if own is None:
        # The daemon sees our file system: bind the socket file alone, read-only
        # (connecting needs no write access to the mount; its siblings stay hidden).
        target = f"{SOCKET_DIR_IN_SANDBOX}/{os.path.basename(host_socket)}"
        mount = mount_type(target, host_socket, type="bind", read_only=True)
        return SocketMount(mount, target)
    try:
        mounts = client.api.inspect_container(own).get("Mounts") or []
    except api_errors as exc:
        raise ConfigError(f"cannot inspect this container ({own[:12]}): {exc}") from exc
    for m in sorted(mounts, key=lambda m: len(str(m.get("Destination", ""))), reverse=True):
        dest = str(m.get("Destination", "")).rstrip("/")
        if not host_socket.startswith(dest + "/"):
            continue
        rel = os.path.relpath(host_socket, dest)
        if m.get("Type") == "volume":
            target = f"{SOCKET_DIR_IN_SANDBOX}/{rel}"
            mount = mount_type(SOCKET_DIR_IN_SANDBOX, m["Name"], type="volume", read_only=True)
            return SocketMount(mount, target)
        if m.get("Type") == "bind":
            target = f"{SOCKET_DIR_IN_SANDBOX}/{os.path.basename(host_socket)}"
            source = os.path.join(str(m["Source"]), rel)
            mount = mount_type(target, source, type="bind", read_only=True)
            return SocketMount(mount, target)
    raise ConfigError(
        f"the Redis socket {host_socket} is not on a volume or bind mount of this "
        f"container ({own[:12]}), so sandbox containers cannot be given it"
    )


def answers_without_auth(socket_path: str) -> bool:
    """Whether Redis on this socket runs commands for a client that never authenticated."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2.0)
            conn.connect(socket_path)
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False
