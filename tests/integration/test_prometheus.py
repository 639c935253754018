"""A real Prometheus (Debian's package) scraping real workers, running the dashboard's queries.

Grafana has no offline build, so its dashboard's PromQL is evaluated here by Prometheus
itself, against the series our workers export after real jobs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from rlm_jobs.config import Settings
from rlm_jobs.models import JobStatus
from rlm_jobs.redis_server import RedisServer, free_port
from rlm_jobs.submitter import Submitter
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import ROOT, Worker, wait_for
from workers.app import create_app
from workers.enqueue import celery_enqueuer
from workers.names import LLM_QUEUE, ORCHESTRATE_QUEUE

pytestmark = pytest.mark.timeout(180)

CONFIG = ROOT / "ops" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "rlm-jobs.json"
# What Grafana puts in place of its own variables before it sends a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m"}


def binary(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is needed (apt-get install -y prometheus; .ci/run installs it)"
    return found


def test_the_compose_prometheus_config_is_valid() -> None:
    out = subprocess.run(
        [binary("promtool"), "check", "config", str(CONFIG)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


class Prometheus:
    def __init__(self, targets: dict[str, int], workdir: Path) -> None:
        # The compose file's scrape settings, with the services' DNS names replaced by
        # this machine's workers.
        config = yaml.safe_load(CONFIG.read_text())
        config["global"]["scrape_interval"] = "1s"
        config["scrape_configs"] = [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in targets.items()
        ]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self._log = (workdir / "prometheus.log").open("wb")
        argv = [
            binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            answer = json.load(reply)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError("prometheus exited")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._log.close()


@pytest.fixture
def workers(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[tuple[Submitter, dict[str, int]]]:
    ports = {"orchestrator": free_port(), "llm-worker": free_port()}
    with ScriptedProvider() as provider:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "RLM_JOBS_REDIS_URL": redis_server.url,
            "RLM_JOBS_SANDBOX_REDIS_SOCKET": redis_server.unix_socket,
            "RLM_JOBS_SCRIPTED_BASE_URL": provider.url,
        }
        started = [
            Worker(queue, {**env, "RLM_JOBS_METRICS_PORT": str(ports[job])}, tmp_path)
            for job, queue in (("orchestrator", ORCHESTRATE_QUEUE), ("llm-worker", LLM_QUEUE))
        ]
        settings = Settings(redis_url=redis_server.url, scripted_base_url=provider.url)
        client = redis.Redis.from_url(redis_server.url)
        try:
            for worker in started:
                worker.wait_ready()
            enqueue = celery_enqueuer(settings, create_app(settings))
            yield Submitter(client, enqueue, settings), ports
        finally:
            for worker in started:
                worker.stop()
            client.close()


def test_prometheus_scrapes_the_workers_and_runs_every_dashboard_query(
    workers: tuple[Submitter, dict[str, int]], tmp_path: Path
) -> None:
    submitter, ports = workers
    prometheus = Prometheus(ports, tmp_path)
    try:
        wait_for(prometheus.ready, 30, "Prometheus to be ready")

        # Given both workers scraped
        def all_up() -> bool:
            up = prometheus.query('up{job=~"orchestrator|llm-worker"} == 1')
            return len(up) == 2

        wait_for(all_up, 30, "both workers up in Prometheus")

        # When jobs finish
        for i in range(2):
            handle = submitter.submit("What is the secret code?", f"The secret code is P-{i}.")
            assert handle.wait(timeout_s=60).status == JobStatus.COMPLETED

        # then Prometheus has them, from the orchestrator
        def completed() -> list[dict[str, Any]]:
            return prometheus.query('rlm_jobs_jobs_total{status="COMPLETED"} == 2')

        (series,) = wait_for(completed, 30, "two completed jobs in Prometheus")
        assert series["metric"]["job"] == "orchestrator"

        # and every query of the dashboard is valid PromQL over our series
        panels = json.loads(DASHBOARD.read_text())["panels"]
        answered = {}
        for panel in panels:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                answered[(panel["title"], target["refId"])] = prometheus.query(expr)
        depths = answered[("Queue depth", "A")]
        assert {d["metric"]["queue"] for d in depths} == {ORCHESTRATE_QUEUE, LLM_QUEUE}
        workers_up = answered[("Workers up", "A")]
        assert {w["metric"]["job"] for w in workers_up} == {"orchestrator", "llm-worker"}
        finished = answered[("Jobs finished", "A")]
        assert float(finished[0]["value"][1]) > 0
    finally:
        prometheus.stop()
