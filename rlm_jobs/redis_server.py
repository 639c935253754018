"""A private ``redis-server`` child on a free port and a Unix socket.

Library mode, ``rlm-jobs run``, the tests and the benchmarks use it when no Redis is
configured. The socket lets network-less sandboxes reach it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """Start with ``RedisServer.start()``; ``stop()`` kills it and removes its directory."""

    def __init__(
        self, proc: subprocess.Popen[bytes], port: int, workdir: Path, password: str
    ) -> None:
        self._proc = proc
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
        proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        server = cls(proc, port, workdir, password)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=1.0)
        try:
            while True:
                try:
                    client.ping()
                    return server
                except redis.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        server.stop()
                        raise ConfigError(f"redis-server did not start on port {port}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)
