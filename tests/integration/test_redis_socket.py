"""Finding Redis's Unix socket for sandboxes: real redis-servers, real workers."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError
from rlm_jobs.models import JobStatus
from rlm_jobs.redis_server import RedisServer, free_port
from rlm_jobs.redis_socket import SOCKET_FLAGS, sandbox_redis_socket
from rlm_jobs.submitter import Submitter
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import Worker, wait_for
from workers.app import create_app
from workers.enqueue import celery_enqueuer
from workers.names import LLM_QUEUE, ORCHESTRATE_QUEUE

pytestmark = pytest.mark.timeout(180)

PASSWORD = "socketless-test-password"


@pytest.fixture
def tcp_only_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server with a password and no Unix socket; its URL."""
    port = free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text(f"requirepass {PASSWORD}\n")
    binary = shutil.which("redis-server")
    assert binary
    args = [
        binary, str(conf), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(up, 10, "the socketless redis-server")
    client.close()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_the_servers_socket_is_found_when_nothing_names_it(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert sandbox_redis_socket(client, Settings()) == redis_server.unix_socket
        named = Settings(sandbox_redis_socket="/elsewhere/redis.sock")
        assert sandbox_redis_socket(client, named) == "/elsewhere/redis.sock"
    finally:
        client.close()


def test_a_redis_without_a_socket_is_an_error_naming_the_flags(tcp_only_redis: str) -> None:
    client = redis.Redis.from_url(tcp_only_redis)
    try:
        with pytest.raises(ConfigError, match="has no Unix socket") as caught:
            sandbox_redis_socket(client, Settings())
        assert SOCKET_FLAGS in str(caught.value)
        with pytest.raises(ConfigError, match="has no Unix socket"):
            sandbox_redis_socket(client, Settings(sandbox_backend="docker"))
        # An unisolated process sandbox connects over TCP instead.
        assert sandbox_redis_socket(client, Settings(sandbox_allow_unsafe=True)) is None
    finally:
        client.close()


def test_a_socket_that_is_not_on_this_machine_is_an_error() -> None:
    server = RedisServer.start()
    client = redis.Redis.from_url(server.url)
    try:
        # The server still reports the path; here it no longer exists, as on another host.
        os.unlink(server.unix_socket)
        with pytest.raises(ConfigError, match="which is not on this machine"):
            sandbox_redis_socket(client, Settings())
    finally:
        client.close()
        server.stop()


def _env(url: str, provider: ScriptedProvider) -> dict[str, str]:
    # No RLM_JOBS_SANDBOX_REDIS_SOCKET: the worker must find the socket itself.
    return {
        "PATH": os.environ.get("PATH", ""),
        "RLM_JOBS_REDIS_URL": url,
        "RLM_JOBS_SCRIPTED_BASE_URL": provider.url,
    }


def _run_one_job(url: str, provider: ScriptedProvider, logdir: Path) -> tuple[str, str, str]:
    """Start an orchestrator and an llm worker on ``url``, run a job: (status, reason, log)."""
    workers = [Worker(q, _env(url, provider), logdir) for q in (ORCHESTRATE_QUEUE, LLM_QUEUE)]
    settings = Settings(redis_url=url, scripted_base_url=provider.url)
    client = redis.Redis.from_url(url)
    try:
        for worker in workers:
            worker.wait_ready()
        submitter = Submitter(client, celery_enqueuer(settings, create_app(settings)), settings)
        handle = submitter.submit("What is the secret code?", "The secret code is SOCK-7.")
        record = handle.wait(timeout_s=60)
        return record.status.value, record.row()["reason"], workers[0].log()
    finally:
        for worker in workers:
            worker.stop()
        client.close()


def test_workers_find_the_socket_and_run_a_job_without_the_setting(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    with ScriptedProvider() as provider:
        status, reason, log = _run_one_job(redis_server.url, provider, tmp_path)
    assert status == JobStatus.COMPLETED.value, reason
    assert f"through its Unix socket {redis_server.unix_socket}" in log


def test_a_job_on_a_redis_without_a_socket_fails_naming_the_flags(
    tcp_only_redis: str, tmp_path: Path
) -> None:
    with ScriptedProvider() as provider:
        status, reason, _ = _run_one_job(tcp_only_redis, provider, tmp_path)
    assert status == JobStatus.FAILED.value
    assert SOCKET_FLAGS in reason
