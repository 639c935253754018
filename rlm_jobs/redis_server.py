"""A private ``redis-server`` on a free port and a Unix socket, alive only as long as its owner.

Library mode, ``rlm-jobs run``, the tests and the benchmarks use it when no Redis is
configured. The socket lets network-less sandboxes reach it.

The server runs under a guard process (``rlm_jobs/redis_guard.py``) that holds the read end
of a pipe whose only writer is the process that started it. However that process ends
(``stop()``, a normal exit, ``os._exit``, SIGKILL, a ``multiprocessing`` worker finishing),
the kernel closes its end, the guard reads end of file and stops the server. A ``fork()``
child inherits the pipe and the ``RedisServer`` object, but not the server: the inherited
end is closed in the child (so the server still dies with its owner) and ``stop()`` there
does nothing (so the child cannot stop its parent's server).

``kill()`` and ``restart()`` exist for tests of Redis crashes: SIGKILL the server, then start
it again on the same port, directory and password, loading its append-only file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import redis

from rlm_jobs.errors import ConfigError

# Redis holds every context, record and trajectory of the process that started it: a
# quarter of the machine's memory leaves the rest to sandboxes (2 GiB of address space each
# by default) and the process itself, and is far more than a test or a local batch needs.
MEMORY_SHARE = 4
# Job data must never be evicted: a full Redis refuses writes (that job fails saying so)
# instead of silently dropping another job's context or result.
MAXMEMORY_POLICY = "noeviction"
# The orchestrator reads every sandbox's out-channel on one connection, and a message of up
# to sandbox.wire.MAX_MESSAGE_BYTES arrives on it as a burst of parts: Redis's default
# (32 MB) would cut the connection off mid-burst. The compose stack's Redis uses the same.
PUBSUB_BUFFER_LIMIT = "pubsub 256mb 64mb 60"


def default_maxmemory_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MEMORY_SHARE


_GUARD = Path(__file__).with_name("redis_guard.py")
# How long stop() waits for the guard to stop its server (the guard waits 5 s, then kills).
_STOP_WAIT_S = 10.0

# Servers this process started, for the fork handler (weak: a dropped server is stopped).
_servers: weakref.WeakSet[RedisServer] = weakref.WeakSet()
_fork_hook_lock = threading.Lock()
_fork_hook_installed = False


def _forget_servers_in_child() -> None:
    """After fork, in the child: the parent's servers are not ours to keep alive or stop."""
    for server in list(_servers):
        server._disown()


def _install_fork_hook() -> None:
    global _fork_hook_installed
    with _fork_hook_lock:
        if not _fork_hook_installed:
            os.register_at_fork(after_in_child=_forget_servers_in_child)
            _fork_hook_installed = True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """Start with ``RedisServer.start()``; ``stop()`` ends it and removes its directory."""

    def __init__(self, args: list[str], port: int, workdir: Path, password: str) -> None:
        self._args = args
        self._guard: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        # The redis-server process (the guard's child); None before the first start.
        self.pid: int | None = None
        self.port = port
        self.workdir = workdir
        self.password = password
        # Its own directory: that is what gets mounted into sandboxes, and nothing else is in it.
        self.unix_socket = str(workdir / "sock" / "redis.sock")

    @property
    def url(self) -> str:
        # The default user has a password: sandboxes can reach the socket, and without one
        # model code could log in as `default` and bypass its ACL user.
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @classmethod
    def start(
        cls,
        *,
        timeout_s: float = 10.0,
        appendonly: bool = False,
        maxmemory_bytes: int | None = None,
    ) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError(
                "redis-server not found: install Redis (apt-get install redis-server) "
                "or set RLM_JOBS_REDIS_URL"
            )
        workdir = Path(tempfile.mkdtemp(prefix="rlm-redis-"))
        # Sandboxes run as other uids: they may traverse to the socket but list nothing here.
        workdir.chmod(0o711)
        (workdir / "sock").mkdir(mode=0o755)
        port = free_port()
        password = secrets.token_urlsafe(24)
        # The password goes in a config file, not argv, so `ps` does not show it.
        conf = workdir / "redis.conf"
        conf.write_text(f"requirepass {password}\n")
        conf.chmod(0o600)
        args = [
            binary,
            str(conf),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(workdir / "sock" / "redis.sock"),
            "--unixsocketperm", "777",  # access is governed by ACL users, not file modes
            "--dir", str(workdir),
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--maxmemory", str(maxmemory_bytes or default_maxmemory_bytes()),
            "--maxmemory-policy", MAXMEMORY_POLICY,
            "--client-output-buffer-limit", PUBSUB_BUFFER_LIMIT,
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        server = cls(args, port, workdir, password)
        try:
            server._launch(timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def owned(self) -> bool:
        """Whether this process started the server (a fork child holds a copy it does not own)."""
        return self._owner_pid == os.getpid()

    def alive(self) -> bool:
        return self.owned and self._guard is not None and self._guard.poll() is None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; ``restart()`` brings it back."""
        guard = self._owned_guard()
        if guard is not None and guard.poll() is None:
            self._tell_guard(guard, b"kill\n")
            guard.wait(timeout=_STOP_WAIT_S)

    def restart(self, timeout_s: float = 30.0) -> None:
        """Start the server again on the same port, directory and password.

        With ``appendonly`` it loads its append-only file first; this returns once it
        answers commands (not while it still says LOADING).
        """
        self.kill()
        self._launch(timeout_s)

    def stop(self) -> None:
        """End the server and remove its directory; does nothing in a process that forked
        from the owner (the server is the owner's)."""
        if not self.owned:
            return
        guard = self._guard
        if guard is not None:
            if guard.stdin is not None:
                guard.stdin.close()  # end of file: the guard stops the server
            try:
                guard.wait(timeout=_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                guard.kill()  # the server gets SIGKILL with it (its parent-death signal)
                guard.wait(timeout=_STOP_WAIT_S)
            self._close_pipes(guard)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- the guard -----------------------------------------------------------------------

    def _launch(self, timeout_s: float) -> None:
        _install_fork_hook()
        if self._guard is not None:
            self._close_pipes(self._guard)  # the previous run's guard has ended
        guard = subprocess.Popen(
            [sys.executable, "-I", str(_GUARD), str(self.workdir), *self._args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the owner reaches it through the pipe
        )
        self._guard = guard
        _servers.add(self)
        deadline = time.monotonic() + timeout_s
        assert guard.stdout is not None
        line = guard.stdout.readline()  # the guard prints the server's pid at once
        if not line.strip().isdigit():
            raise ConfigError("the redis-server guard did not start")
        self.pid = int(line)
        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1.0
        )
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, redis.TimeoutError):  # LOADING included
                    if guard.poll() is not None or time.monotonic() > deadline:
                        raise ConfigError(
                            f"redis-server did not start on port {self.port}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def _owned_guard(self) -> subprocess.Popen[bytes] | None:
        return self._guard if self.owned else None

    @staticmethod
    def _tell_guard(guard: subprocess.Popen[bytes], command: bytes) -> None:
        assert guard.stdin is not None
        # A guard that is gone already took its server with it.
        with contextlib.suppress(BrokenPipeError, ValueError):
            guard.stdin.write(command)
            guard.stdin.flush()

    def _disown(self) -> None:
        """In a fork child: close the inherited end of the pipe, so only the owner holds it."""
        guard = self._guard
        if guard is not None:
            self._close_pipes(guard)

    @staticmethod
    def _close_pipes(guard: subprocess.Popen[bytes]) -> None:
        for pipe in (guard.stdin, guard.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
