"""Prometheus metrics: scraped over HTTP from real `celery -A workers worker` processes.

Jobs run end to end (real Redis, the scripted provider); queue depths are read from the
broker's own lists while messages wait; the LLM router's observer methods are checked
through the same HTTP endpoint.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from rlm_jobs import keys
from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError
from rlm_jobs.metrics import Metrics
from rlm_jobs.models import JobStatus
from rlm_jobs.redis_server import RedisServer, free_port
from rlm_jobs.submitter import Submitter
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import Worker, wait_for
from workers.app import create_app
from workers.enqueue import celery_enqueuer
from workers.names import LLM_QUEUE, ORCHESTRATE_QUEUE, RUN_JOB_TASK

pytestmark = pytest.mark.timeout(180)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample at ``url``, by (name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free ports on loopback."""
    for _ in range(50):
        first = free_port()
        held = []
        try:
            for port in range(first, first + n):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                held.append(s)
            return first
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise AssertionError(f"no {n} consecutive free ports")


class Cluster:
    def __init__(self, server: RedisServer, provider: ScriptedProvider, logdir: Path) -> None:
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "RLM_JOBS_REDIS_URL": server.url,
            "RLM_JOBS_SANDBOX_REDIS_SOCKET": server.unix_socket,
            "RLM_JOBS_SCRIPTED_BASE_URL": provider.url,
        }
        self.logdir = logdir
        self.workers: list[Worker] = []
        self.settings = Settings(redis_url=server.url, scripted_base_url=provider.url)
        self.client = redis.Redis.from_url(server.url)
        self.app = create_app(self.settings)
        self.submitter = Submitter(
            self.client, celery_enqueuer(self.settings, self.app), self.settings
        )

    def start(self, queue: str, *, wait: bool = True, **env: str) -> Worker:
        worker = Worker(queue, {**self.env, **env}, self.logdir, concurrency=4)
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.client.close()


@pytest.fixture
def cluster(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[Cluster]:
    with ScriptedProvider() as provider:
        c = Cluster(redis_server, provider, tmp_path)
        try:
            yield c
        finally:
            c.stop()


def metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


def test_queue_depth_and_finished_jobs_from_the_workers_endpoints(cluster: Cluster) -> None:
    # Given two workers on one host sharing one metrics setting (a range of two ports)
    first = free_ports(2)
    shared = {"RLM_JOBS_METRICS_PORT": str(first), "RLM_JOBS_METRICS_PORT_RANGE": "2"}
    cluster.start(LLM_QUEUE, **shared)
    llm_url = metrics_url(first)
    assert value(scrape(llm_url), "rlm_jobs_queue_depth", queue=ORCHESTRATE_QUEUE) == 0

    # When jobs wait with no orchestrator to take them, one of them at a high priority
    handles = [
        cluster.submitter.submit("What is the secret code?", f"The secret code is M-{i}.")
        for i in range(3)
    ]
    cluster.app.send_task(RUN_JOB_TASK, args=["no-such-job"], queue=ORCHESTRATE_QUEUE, priority=9)
    assert cluster.client.llen(keys.broker_queue_lists(ORCHESTRATE_QUEUE)[-1]) == 1

    # then every worker reports them waiting, at every priority
    samples = scrape(llm_url)
    assert value(samples, "rlm_jobs_queue_depth", queue=ORCHESTRATE_QUEUE) == 4
    assert value(samples, "rlm_jobs_queue_depth", queue=LLM_QUEUE) == 0
    assert value(samples, "rlm_jobs_jobs_total", status="COMPLETED") == 0

    # and once an orchestrator (on the second port of the range) has run them
    orchestrator = cluster.start(ORCHESTRATE_QUEUE, **shared)
    orchestrator_url = metrics_url(first + 1)
    for handle in handles:
        assert handle.wait(timeout_s=60).status == JobStatus.COMPLETED

    # it counts the finished jobs by status, and the queue is empty
    def counted() -> Samples | None:
        s = scrape(orchestrator_url)
        return s if value(s, "rlm_jobs_jobs_total", status="COMPLETED") == 3 else None

    samples = wait_for(counted, 10, "three completed jobs in the orchestrator's metrics")
    assert value(samples, "rlm_jobs_jobs_total", status="FAILED") == 0
    assert value(samples, "rlm_jobs_queue_depth", queue=ORCHESTRATE_QUEUE) == 0
    assert value(scrape(llm_url), "rlm_jobs_jobs_total", status="COMPLETED") == 0
    assert "metrics: serving http://127.0.0.1:" in orchestrator.log()
    assert (value(samples, "process_resident_memory_bytes") or 0) > 0


def test_a_worker_whose_metrics_port_is_taken_does_not_start(cluster: Cluster) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = cluster.start(LLM_QUEUE, wait=False, RLM_JOBS_METRICS_PORT=str(port))
        worker.proc.wait(timeout=60)
    assert worker.proc.returncode != 0
    assert f"cannot serve metrics: port {port} on 127.0.0.1 taken" in worker.log()


def test_the_routers_observer_calls_reach_the_endpoint() -> None:
    metrics = Metrics()
    server = metrics.serve(free_port())
    try:
        metrics.call_done("openai/gpt-4o-mini", "root", 1000, 200, 0.0027, cached=False)
        metrics.call_done("openai/gpt-4o-mini", "sub", 500, 50, 0.0011, cached=False)
        metrics.call_done("openai/gpt-4o-mini", "sub", 500, 50, 0.0011, cached=True)
        metrics.provider_error("openai/gpt-4o-mini", "429")
        metrics.provider_error("openai/gpt-4o-mini", "429")
        metrics.provider_error("anthropic/claude-haiku-4-5", "timeout")
        metrics.rate_limit_wait("openai/gpt-4o-mini", 0.2)
        metrics.rate_limit_wait("openai/gpt-4o-mini", 7.0)
        metrics.job_finished(JobStatus.BUDGET_EXCEEDED)

        s = scrape(server.url)
        model = "openai/gpt-4o-mini"
        assert value(s, "rlm_jobs_llm_calls_total", model=model, kind="root") == 1
        assert value(s, "rlm_jobs_llm_calls_total", model=model, kind="sub") == 1
        assert value(s, "rlm_jobs_llm_calls_total", model=model, kind="cached") == 1
        # A cache hit sends nothing: no tokens, no spend; what it would have cost is apart.
        assert value(s, "rlm_jobs_tokens_total", model=model, direction="input") == 1500
        assert value(s, "rlm_jobs_tokens_total", model=model, direction="output") == 250
        assert value(s, "rlm_jobs_cost_usd_total", model=model) == pytest.approx(0.0038)
        assert value(s, "rlm_jobs_cached_cost_usd_total", model=model) == pytest.approx(0.0011)
        assert value(s, "rlm_jobs_provider_errors_total", model=model, code="429") == 2
        haiku = "anthropic/claude-haiku-4-5"
        assert value(s, "rlm_jobs_provider_errors_total", model=haiku, code="timeout") == 1
        wait = "rlm_jobs_rate_limit_wait_seconds"
        assert value(s, f"{wait}_count", model=model) == 2
        assert value(s, f"{wait}_sum", model=model) == pytest.approx(7.2)
        assert value(s, f"{wait}_bucket", model=model, le="0.25") == 1
        assert value(s, f"{wait}_bucket", model=model, le="10.0") == 2
        assert value(s, "rlm_jobs_jobs_total", status="BUDGET_EXCEEDED") == 1
    finally:
        server.close()
    with pytest.raises(ValueError, match="unknown call kind"):
        metrics.call_done("openai/gpt-4o-mini", "cached", 1, 1, 0.0, cached=True)
    with pytest.raises(ValueError, match="not a final status"):
        metrics.job_finished(JobStatus.RUNNING)


def test_a_scrape_during_a_redis_outage_answers_without_queue_depths() -> None:
    metrics = Metrics()
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    metrics.watch_queues(dead, [ORCHESTRATE_QUEUE])
    server = metrics.serve(free_port())
    try:
        samples = scrape(server.url)
    finally:
        server.close()
    assert not any(name == "rlm_jobs_queue_depth" for name, _ in samples)
    assert value(samples, "rlm_jobs_jobs_total", status="COMPLETED") == 0


def test_serving_on_a_port_range_skips_taken_ports() -> None:
    first = free_ports(3)
    metrics = [Metrics() for _ in range(3)]
    servers = [m.serve(first, ports=2) for m in metrics[:2]]
    try:
        assert [s.port for s in servers] == [first, first + 1]
        with pytest.raises(ConfigError, match=rf"ports {first}-{first + 1} on 127.0.0.1 taken"):
            metrics[2].serve(first, ports=2)
    finally:
        for server in servers:
            server.close()
