"""The Unix socket sandboxes reach Redis through, found by asking the server.

Sandboxes have no network: their one way out is Redis's Unix socket, mounted into them.
``RLM_JOBS_SANDBOX_REDIS_SOCKET`` names it, or the connection URL does (``unix://``); when
neither does, the server is asked (``CONFIG GET unixsocket``), so a worker on Redis's host
needs no setting. A Redis without a socket, or whose socket is not on this machine, is a
configuration error that names the redis-server flags to add.
"""

from __future__ import annotations

import logging
import os
import stat

import redis

from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError

log = logging.getLogger(__name__)

# What to add to a redis-server command line (the path is an example: any directory
# the sandboxes may traverse). Access is decided by ACL users, so everyone may connect.
SOCKET_FLAGS = "--unixsocket /run/rlm-redis/redis.sock --unixsocketperm 777"


def sandbox_redis_socket(client: redis.Redis, settings: Settings) -> str | None:
    """The socket path sandboxes get: the setting, the client's own, or the server's.

    None only when the server has none and the sandboxes can do without (a plain,
    unisolated process sandbox connects over TCP).
    """
    kwargs = client.connection_pool.connection_kwargs
    configured = settings.sandbox_redis_socket or kwargs.get("path")
    if configured:
        return str(configured)
    needed = settings.sandbox_backend == "docker" or not settings.sandbox_allow_unsafe
    where = f"Redis at {kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    try:
        path, perm = _socket_config(client)
    except redis.ResponseError as exc:  # CONFIG renamed or denied (managed Redis, ACLs)
        if not needed:
            return None
        raise ConfigError(
            f"sandboxes need Redis's Unix socket and {where} would not say where it is "
            f"(CONFIG GET unixsocket: {exc}); set RLM_JOBS_SANDBOX_REDIS_SOCKET to its path"
        ) from exc
    if not path:
        if not needed:
            return None
        raise ConfigError(
            f"{where} has no Unix socket, and sandboxes (no network) reach Redis only "
            f"through one: start redis-server with {SOCKET_FLAGS}, with a password "
            "(requirepass), on the orchestrators' host"
        )
    problem = _not_a_socket(path)
    if problem:
        if not needed:
            return None
        raise ConfigError(
            f"{where} listens on the Unix socket {path}, which {problem}: run orchestrators "
            "on Redis's host, or mount the socket and set RLM_JOBS_SANDBOX_REDIS_SOCKET to "
            "its path here"
        )
    if perm is not None and perm & 0o006 != 0o006:
        log.warning(
            "Redis's Unix socket %s has mode %o: sandboxes run as other users and cannot "
            "connect; restart redis-server with --unixsocketperm 777 (ACL users, not file "
            "modes, decide what a connection may do)",
            path,
            perm,
        )
    log.info("sandboxes reach Redis through its Unix socket %s (CONFIG GET unixsocket)", path)
    return path


def _socket_config(client: redis.Redis) -> tuple[str, int | None]:
    config = client.config_get("unixsocket*")
    path = _text(config.get("unixsocket", ""))
    raw_perm = _text(config.get("unixsocketperm", ""))
    try:
        perm = int(raw_perm, 8) if raw_perm else None
    except ValueError:
        perm = None
    return path, perm


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _not_a_socket(path: str) -> str | None:
    """Why ``path`` is no socket this process can hand to sandboxes, or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is not on this machine"
    except OSError as exc:
        return f"this process cannot reach ({exc.strerror})"
    return None if stat.S_ISSOCK(mode) else "is not a socket"
