"""The worker pool: threads unless told otherwise, solo works, prefork refuses to start.

Real `celery -A workers worker` processes started as users type them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rlm_jobs.models import JobStatus
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import Cluster, Worker, needle_context, wait_sandboxes_gone
from workers.names import LLM_QUEUE, ORCHESTRATE_QUEUE

pytestmark = pytest.mark.timeout(180)

REFUSAL = "rlm-jobs workers run on the threads pool (the default) or solo, not prefork"


@pytest.fixture
def cluster(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    scripted_provider: ScriptedProvider,
    tmp_path: Path,
) -> Iterator[Cluster]:
    c = Cluster(redis_server, scripted_provider, tmp_path)
    yield c
    c.stop()
    wait_sandboxes_gone(c.marker)


def start(cluster: Cluster, queue: str, pool: str | None) -> Worker:
    worker = Worker(queue, cluster.env, cluster.logdir, concurrency=2, pool=pool)
    cluster.workers.append(worker)
    return worker


def run_a_job(cluster: Cluster, code: str) -> None:
    handle = cluster.submitter.submit(
        "What is the secret code?", needle_context(3, code, 1), model="scripted/needle"
    )
    row = handle.wait(timeout_s=60).row()
    assert (row["status"], row["answer"]) == (JobStatus.COMPLETED.value, code)


def test_the_plain_command_runs_jobs_on_the_threads_pool(cluster: Cluster) -> None:
    orchestrator = start(cluster, ORCHESTRATE_QUEUE, pool=None)  # no --pool: the app chooses
    llm = start(cluster, LLM_QUEUE, pool=None)
    orchestrator.wait_ready()
    llm.wait_ready()
    assert "(thread)" in orchestrator.log() and "(thread)" in llm.log()
    run_a_job(cluster, "PLAIN-1")
    run_a_job(cluster, "PLAIN-2")


def test_the_solo_pool_runs_jobs(cluster: Cluster) -> None:
    orchestrator = start(cluster, ORCHESTRATE_QUEUE, pool="solo")
    llm = start(cluster, LLM_QUEUE, pool="solo")
    orchestrator.wait_ready()
    llm.wait_ready()
    assert "(solo)" in orchestrator.log()
    run_a_job(cluster, "SOLO-1")


@pytest.mark.parametrize("pool", ["prefork", "processes"])
def test_prefork_refuses_to_start_and_takes_no_job(cluster: Cluster, pool: str) -> None:
    handle = cluster.submitter.submit("q", "ctx", model="scripted/needle")
    worker = start(cluster, ORCHESTRATE_QUEUE, pool=pool)
    assert worker.proc.wait(timeout=60) == 1
    lines = [line for line in worker.log().splitlines() if REFUSAL in line]
    assert len(lines) == 1 and "drop --pool or use --pool threads" in lines[0]
    assert "Traceback" not in worker.log()
    # The job was never taken: it is still queued for a worker that can run it.
    assert handle.status() is JobStatus.QUEUED
    threads = start(cluster, ORCHESTRATE_QUEUE, pool="threads")
    start(cluster, LLM_QUEUE, pool="threads").wait_ready()
    threads.wait_ready()
    assert handle.wait(timeout_s=60).status is JobStatus.COMPLETED
