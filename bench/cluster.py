"""What every scenario runs on: a private redis-server, the scripted provider, workers.

Workers are real ``celery -A workers worker`` subprocesses started with the tests' own
``tests.support.Worker``; the echo baseline's worker is the same class pointed at
``bench.echo``. The provider runs in this process (so bench policies can be registered),
the private Redis's default user has a password, so sandboxes are as isolated as in
production.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import policies
from rlm_jobs.config import Settings
from rlm_jobs.models import JobStatus, Limits
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.store import JobRecord
from rlm_jobs.submitter import JobHandle, Submitter
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import Worker, wait_for
from workers.app import create_app
from workers.enqueue import celery_enqueuer
from workers.names import LLM_QUEUE, ORCHESTRATE_QUEUE

__all__ = [
    "LLM_QUEUE",
    "ORCHESTRATE_QUEUE",
    "Cluster",
    "WorkerSpec",
    "echo_spec",
    "echo_worker",
    "wait_for",
]

WORKER_START_TIMEOUT_S = 90.0


def echo_worker(
    env: Mapping[str, str], logdir: Path, *, concurrency: int = 8, queues: str = ""
) -> Worker:
    """``tests.support.Worker`` running the bench's echo app instead of ``workers``."""
    from bench import echo

    return Worker(
        queues or echo.QUEUE,
        env,
        logdir,
        concurrency=concurrency,
        name=f"bench-echo-{uuid.uuid4().hex[:6]}",
        app="bench.echo",
    )


@dataclass(frozen=True)
class WorkerSpec:
    queues: str
    concurrency: int
    env: dict[str, str] = field(default_factory=dict)
    # "workers" (rlm-jobs) or "echo" (the bare-Celery baseline, bench.echo).
    app: str = "workers"


def llm_spec(calls: int) -> WorkerSpec:
    """An llm worker process that runs at most ``calls`` provider calls at once.

    Prompts travel in chunks, so Celery's concurrency counts chunks in flight; the cap on
    provider calls is ``llm_worker_concurrency``. Both are set to ``calls``.
    """
    return WorkerSpec(LLM_QUEUE, calls, env={"RLM_JOBS_LLM_WORKER_CONCURRENCY": str(calls)})


def echo_spec(concurrency: int = 8) -> WorkerSpec:
    return WorkerSpec("bench.echo", concurrency, app="echo")


class Cluster:
    """Redis + provider for the whole run; workers come and go per scenario."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.server: RedisServer | None = None
        self.provider: ScriptedProvider | None = None
        self.redis_url = ""
        self.running: list[tuple[WorkerSpec, Worker]] = []

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> Cluster:
        policies.install()
        self.server = RedisServer.start()  # its default user has a password
        self.redis_url = self.server.url
        # The echo app (bench.echo.app) configures itself from this, here and in its worker.
        os.environ["BENCH_REDIS_URL"] = self.redis_url
        self.provider = ScriptedProvider().start()
        self.client = redis.Redis.from_url(self.redis_url, socket_timeout=60)
        self.settings = Settings(
            redis_url=self.redis_url,
            sandbox_redis_socket=self.server.unix_socket,
            scripted_base_url=self.provider.url,
        )
        self.app = create_app(self.settings)
        self.submitter = Submitter(
            self.client, celery_enqueuer(self.settings, self.app), self.settings
        )
        return self

    def stop(self) -> None:
        self.stop_workers()
        if self.provider is not None:
            self.provider.stop()
            self.provider = None
        if self.server is not None:
            self.client.close()
            self.server.stop()
            self.server = None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- workers ------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        assert self.server is not None and self.provider is not None
        return {
            "PATH": os.environ.get("PATH", ""),
            "RLM_JOBS_REDIS_URL": self.redis_url,
            "RLM_JOBS_SANDBOX_REDIS_SOCKET": self.server.unix_socket,
            "RLM_JOBS_SCRIPTED_BASE_URL": self.provider.url,
            "BENCH_REDIS_URL": self.redis_url,
            **extra,
        }

    def _launch(self, spec: WorkerSpec) -> Worker:
        env = self.env(**spec.env)
        if spec.app == "echo":
            return echo_worker(env, self.logdir, concurrency=spec.concurrency, queues=spec.queues)
        return Worker(spec.queues, env, self.logdir, concurrency=spec.concurrency)

    def ensure_workers(self, specs: Iterable[WorkerSpec]) -> list[Worker]:
        """Exactly these workers, in this order: running ones that match are kept, the
        rest stopped, missing ones started (all at once, then each waited for).

        Scenarios that need the same workers share them, which keeps smoke runs short.
        """
        spare = list(self.running)
        chosen: list[Worker | None] = []
        missing: list[tuple[int, WorkerSpec]] = []
        for i, spec in enumerate(specs):
            match = next((pair for pair in spare if pair[0] == spec), None)
            if match is not None:
                spare.remove(match)
                chosen.append(match[1])
            else:
                chosen.append(None)
                missing.append((i, spec))
        self.stop_workers([w for _, w in spare])
        started = [(i, spec, self._launch(spec)) for i, spec in missing]
        for i, spec, worker in started:
            self.running.append((spec, worker))
            chosen[i] = worker
        for _, _, worker in started:
            worker.wait_ready(WORKER_START_TIMEOUT_S)
        return [w for w in chosen if w is not None]

    def stop_workers(self, workers: Iterable[Worker] | None = None) -> None:
        """Stop workers (default: all) in parallel; a warm shutdown takes seconds each."""
        chosen = [w for _, w in self.running] if workers is None else list(workers)
        threads = [threading.Thread(target=w.stop) for w in chosen]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.running = [(s, w) for s, w in self.running if w not in chosen]

    def cpu_groups(self) -> dict[str, list[int]]:
        """Process ids by role, for ``procinfo.CpuMeter``."""
        groups: dict[str, list[int]] = {
            # Its children (workers, the reference runner) are counted in their own groups.
            "bench process (scripted provider)": [-os.getpid()],
            "redis-server": [int(self.client.info("server")["process_id"])],
        }
        for spec, worker in self.running:
            role = {
                "rlm.orchestrate": "orchestrator worker",
                "rlm.llm": "llm workers",
            }.get(spec.queues, f"{spec.app} workers")
            groups.setdefault(role, []).append(worker.proc.pid)
        return groups

    # ---- jobs ---------------------------------------------------------------------------

    def submit(
        self, policy: str, query: str, context: Any, *, max_depth: int = 1
    ) -> tuple[JobHandle, float]:
        """Submit a job; returns its handle and the wall-clock time just before submitting."""
        submitted = time.time()
        handle = self.submitter.submit(
            query,
            context,
            model=f"scripted/{policy}",
            limits=Limits(max_depth=max_depth),
        )
        return handle, submitted

    def wait(self, handle: JobHandle, timeout_s: float = 600.0) -> JobRecord:
        """The finished record; polled often so detection adds little (use its timestamps)."""
        record = handle.wait(timeout_s=timeout_s, poll_s=0.01)
        return record

    @staticmethod
    def finished_at(record: JobRecord) -> float:
        return float(record.fields["finished_at"])

    @staticmethod
    def ok(record: JobRecord) -> bool:
        return record.status is JobStatus.COMPLETED
