"""Flower against a real cluster: `celery -A workers flower` as users start it.

Real Redis, real `celery -A workers worker` processes (orchestrator and llm), the scripted
provider with latency so jobs are observably running, and Flower's own HTTP API and task
page (rendered by headless Chromium, which runs the page's scripts as a browser does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rlm_jobs.config import Settings
from rlm_jobs.redis_server import RedisServer, free_port
from rlm_jobs.submitter import JobHandle, Submitter
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import ROOT, Worker, wait_for
from workers.app import create_app
from workers.enqueue import celery_enqueuer
from workers.monitoring import WORKER_POOL_LIMIT
from workers.names import LLM_QUEUE, LLM_TASK, ORCHESTRATE_QUEUE, RUN_JOB_TASK

pytestmark = pytest.mark.timeout(240)

# Each root turn takes this long, so a three-turn job runs for several seconds.
ROOT_LATENCY_S = 4.0
PROGRESS_FIELDS = ("iteration", "subcalls_done", "subcalls_in_flight", "tokens", "cost_usd")
# Headless, and nothing that would reach beyond this machine.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=3000",
)  # fmt: skip
SCREEN_SIZE = "--window-size=1280,1100"


def flower_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "workers", "flower",
        f"--port={port}", "--address=127.0.0.1",
    ]  # fmt: skip


class Flower:
    """`celery -A workers flower` on a free port, its API open (FLOWER_UNAUTHENTICATED_API)."""

    def __init__(self, env: dict[str, str], logdir: Path, client: redis.Redis) -> None:
        self.port = free_port()
        # Its event receiver subscribes by pattern, some time after its HTTP server is up;
        # events published before that are lost to it (pub/sub), so tests wait for it.
        patterns = client.pubsub_numpat()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = logdir / "flower.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            flower_argv(self.port),
            cwd=ROOT,
            env={**env, "FLOWER_UNAUTHENTICATED_API": "true"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._healthy, 30, "Flower to answer")
        wait_for(lambda: client.pubsub_numpat() > patterns, 30, "Flower to receive events")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"flower exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/healthcheck", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as reply:
            return json.load(reply)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._log.close()


class Stack:
    def __init__(self, server: RedisServer, provider: ScriptedProvider, logdir: Path) -> None:
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "RLM_JOBS_REDIS_URL": server.url,
            "RLM_JOBS_SANDBOX_REDIS_SOCKET": server.unix_socket,
            "RLM_JOBS_SCRIPTED_BASE_URL": provider.url,
        }
        self.logdir = logdir
        self.workers = [
            Worker(ORCHESTRATE_QUEUE, self.env, logdir, concurrency=4),
            Worker(LLM_QUEUE, self.env, logdir, concurrency=8),
        ]
        for worker in self.workers:
            worker.wait_ready()
        settings = Settings(redis_url=server.url, scripted_base_url=provider.url)
        self.client = redis.Redis.from_url(server.url)
        self.submitter = Submitter(
            self.client, celery_enqueuer(settings, create_app(settings)), settings
        )

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.client.close()


@pytest.fixture
def stack(redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path) -> Iterator[Stack]:
    with ScriptedProvider(root_latency_s=ROOT_LATENCY_S) as provider:
        s = Stack(redis_server, provider, tmp_path)
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture
def flower(stack: Stack, tmp_path: Path) -> Iterator[Flower]:
    f = Flower(stack.env, tmp_path, stack.client)
    yield f
    f.stop()


def needle_context(code: str) -> str:
    filler = "lorem ipsum dolor sit amet. " * 3000
    return f"{filler}\nThe secret code is {code}.\n{filler}"


def orchestrator_tasks(flower: Flower) -> dict[str, dict[str, Any]]:
    """Flower's orchestrator tasks by the job id they carry (their only argument)."""
    tasks = flower.get(f"/api/tasks?taskname={RUN_JOB_TASK}")
    return {_job_id_of(task): task for task in tasks.values() if task.get("args")}


def _job_id_of(task: dict[str, Any]) -> str:
    # Flower keeps arguments as the worker's repr: "['<job id>']".
    return str(task["args"]).strip("[]()'\", ")


def in_progress(
    flower: Flower, job_ids: set[str], shows: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """A task of ``job_ids`` in PROGRESS whose counters pass ``shows``, or None."""
    for job_id, task in orchestrator_tasks(flower).items():
        if job_id in job_ids and task["state"] == "PROGRESS" and task.get("result"):
            progress = json.loads(task["result"])
            if shows(progress):
                return {"task": task, "progress": progress}
    return None


def check_progress(task: dict[str, Any], progress: dict[str, Any], job_ids: set[str]) -> None:
    assert task["name"] == RUN_JOB_TASK
    assert progress["job_id"] in job_ids and progress["job_id"] in task["args"]
    assert all(field in progress for field in PROGRESS_FIELDS)
    assert 1 <= progress["iteration"] <= progress["max_iterations"]
    assert progress["depth"] == 0


def chromium(url: str, profile: Path, *output: str) -> str:
    """Headless Chromium (Debian's package) on ``url``; its stdout."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is needed (apt-get install -y chromium; .ci/run installs it)"
    profile.mkdir(exist_ok=True)
    out = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *output, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_flower_lists_our_tasks_and_workers_and_shows_a_running_jobs_progress(
    stack: Stack, flower: Flower, tmp_path: Path
) -> None:
    # Given a cluster with Flower watching it, when three jobs run
    handles: list[JobHandle] = [
        stack.submitter.submit(
            "What is the secret code?", needle_context(f"FL-{i}"), model="scripted/needle"
        )
        for i in range(3)
    ]
    job_ids = {h.id for h in handles}

    # then a running job shows PROGRESS in the API: iteration, sub-calls, tokens, cost
    seen = wait_for(
        lambda: in_progress(flower, job_ids, lambda p: p["subcalls_done"] > 0),
        60,
        "a job in PROGRESS with sub-calls done, in Flower's API",
    )
    check_progress(seen["task"], seen["progress"], job_ids)
    assert seen["progress"]["tokens"] > 0
    assert seen["progress"]["cost_usd"] > 0  # the scripted models are priced like a real one

    # and on its task page, as a browser renders it (a job submitted now is in PROGRESS for
    # two root turns after its first, ample time to load the page)
    late = stack.submitter.submit(
        "What is the secret code?", needle_context("FL-LATE"), model="scripted/needle"
    )
    handles.append(late)
    job_ids.add(late.id)
    seen = wait_for(
        lambda: in_progress(flower, {late.id}, lambda p: p["tokens"] > 0),
        60,
        "the late job in PROGRESS",
    )
    task = seen["task"]
    page = f"{flower.url}/task/{task['uuid']}"
    dom = chromium(page, tmp_path / "chromium", "--dump-dom")
    assert RUN_JOB_TASK in dom and task["uuid"] in dom
    assert ">PROGRESS<" in dom
    assert f'"job_id": "{late.id}", "iteration": ' in dom and '"cost_usd": ' in dom
    screenshot = os.environ.get("RLM_JOBS_TEST_FLOWER_SCREENSHOT")
    if screenshot:  # to refresh docs/flower-task.png
        chromium(page, tmp_path / "chromium", f"--screenshot={screenshot}", SCREEN_SIZE)

    # and when the jobs are done, every orchestrator task is listed by name as a success
    for handle in handles:
        assert handle.wait(timeout_s=90).row()["status"] == "COMPLETED"

    def all_succeeded() -> dict[str, dict[str, Any]] | None:
        tasks = orchestrator_tasks(flower)
        done = {j: t for j, t in tasks.items() if j in job_ids and t["state"] == "SUCCESS"}
        return done if set(done) == job_ids else None

    done = wait_for(all_succeeded, 30, "every orchestrator task to succeed in Flower")
    assert all(t["name"] == RUN_JOB_TASK and t["worker"] for t in done.values())

    # and the llm tasks and both workers are listed too
    llm_tasks = flower.get(f"/api/tasks?taskname={LLM_TASK}")
    assert llm_tasks and all(t["state"] == "SUCCESS" for t in llm_tasks.values())
    workers = flower.get("/api/workers?refresh=1")
    assert {w.name for w in stack.workers} <= {name.split("@")[0] for name in workers}

    # while each worker process kept its small broker pool
    for worker in stack.workers:
        assert f"broker pool: {WORKER_POOL_LIMIT} connections per process" in worker.log()


def test_flowers_api_stays_shut_without_auth(redis_server: RedisServer, tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "RLM_JOBS_REDIS_URL": redis_server.url}
    port = free_port()
    log = (tmp_path / "flower-closed.log").open("wb")
    proc = subprocess.Popen(
        flower_argv(port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:

        def status() -> int | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks", timeout=2):
                    return 200
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return None

        assert wait_for(status, 30, "Flower to answer") == 401
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
