"""A real scripted provider per test, and settings pointing every provider at it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from rlm_jobs.config import Settings
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.testing import ScriptedProvider
from tests.support import Stack, Worker, wait_for, wait_sandboxes_gone, workers_answer_ping
from workers.names import LLM_QUEUE, ORCHESTRATE_QUEUE


@pytest.fixture
def scripted_provider() -> Iterator[ScriptedProvider]:
    with ScriptedProvider() as provider:
        yield provider


@pytest.fixture
def scripted_settings(scripted_provider: ScriptedProvider) -> Settings:
    """Every provider aimed at the scripted server, with fast timeouts and backoff.

    The Anthropic SDK talks to the same server (it speaks both wire formats); the keys are
    dummies the server ignores.
    """
    return Settings(
        scripted_base_url=scripted_provider.url,
        anthropic_base_url=scripted_provider.root_url,
        anthropic_api_key="scripted-test-key",
        openai_base_url=scripted_provider.url,
        openai_api_key="scripted-test-key",
        request_timeout_s=2.0,
        max_retries=3,
        retry_base_s=0.01,
        retry_max_s=2.0,
    )


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    marker = str(redis_server.workdir)
    logdir = tmp_path_factory.mktemp("cli-workers")
    provider = ScriptedProvider().start()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "RLM_JOBS_REDIS_URL": redis_server.url,
        "RLM_JOBS_SANDBOX_REDIS_SOCKET": redis_server.unix_socket,
        "RLM_JOBS_SCRIPTED_BASE_URL": provider.url,
    }
    workers = [
        Worker(ORCHESTRATE_QUEUE, env, logdir, concurrency=8),
        Worker(LLM_QUEUE, env, logdir, concurrency=16),
    ]
    try:
        for worker in workers:
            worker.wait_ready()
        settings = Settings(redis_url=redis_server.url)
        names = [w.name for w in workers]
        wait_for(lambda: workers_answer_ping(settings, names), 30, "both workers to answer a ping")
        yield Stack(redis_server, provider, workers)
    finally:
        for worker in workers:
            worker.stop()
        provider.stop()
    wait_sandboxes_gone(marker)
