"""9. Faults: a batch survives dead workers and a dead Redis without paying twice.

One cluster of its own (2 orchestrators and 2 llm workers on threads pools, a Redis with
AOF, the scripted provider at 1.5 s a root call and 0.3 s a sub-call), one batch of needle
documents, each with its own code. First a calm run, then the same batch again under each
fault, ``FAULTS`` times spread over the run: an orchestrator killed with SIGKILL (and a new
one started, as a supervisor would), an llm worker killed the same way, Redis killed and
restarted on its AOF. Root calls are background responses (``background_calls=root``), so
a root call in flight on a killed llm worker is fetched by the worker that takes it over
instead of being asked again. Each run reports its answers, the provider's own count of root calls
and sub-calls (its request log) against the calm run's, and its wall time against the calm
run's.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench import stats
from bench.scenarios import RunContext, log, result
from rlm_jobs.config import Settings, redis_client
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.submitter import Document, Submitter
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import Worker, needle_context
from workers.app import create_app
from workers.enqueue import celery_enqueuer
from workers.names import LLM_QUEUE, ORCHESTRATE_QUEUE

# Targets: only what was in flight may be asked twice.
ROOT_CALLS_LIMIT = 1.05
SUB_CALLS_LIMIT = 1.10
LLM_WORKER_WALL_LIMIT = 2.5
ROOT_LATENCY_S = 1.5
SUB_LATENCY_S = 0.3
# Root calls take 1.5 s: an llm worker killed at any moment holds several in flight.
BACKGROUND_CALLS = "root"
CHUNKS_PER_DOC = 4  # the needle policy reads a document in 50,000-character chunks


class FaultCluster:
    """The scenario's own Redis (AOF), provider settings and workers."""

    def __init__(self, ctx: RunContext, provider: ScriptedProvider) -> None:
        self.logdir = ctx.workdir / "s9"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.provider = provider
        self.server = RedisServer.start(appendonly=True)
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "RLM_JOBS_REDIS_URL": self.server.url,
            "RLM_JOBS_SANDBOX_REDIS_SOCKET": self.server.unix_socket,
            "RLM_JOBS_SCRIPTED_BASE_URL": provider.url,
            "RLM_JOBS_BACKGROUND_CALLS": BACKGROUND_CALLS,
        }
        settings = Settings(redis_url=self.server.url, scripted_base_url=provider.url)
        # Retries like the workers' clients: the scenario restarts Redis under it.
        self.client = redis_client(settings)
        self.submitter = Submitter(
            self.client, celery_enqueuer(settings, create_app(settings)), settings
        )
        self.orchestrators: list[Worker] = []
        self.llm_workers: list[Worker] = []

    def start_orchestrator(self) -> Worker:
        worker = Worker(ORCHESTRATE_QUEUE, self.env, self.logdir, concurrency=8)
        worker.wait_ready(90)
        self.orchestrators.append(worker)
        return worker

    def start_llm_worker(self) -> Worker:
        env = {**self.env, "RLM_JOBS_LLM_WORKER_CONCURRENCY": "16"}
        worker = Worker(LLM_QUEUE, env, self.logdir, concurrency=16)
        worker.wait_ready(90)
        self.llm_workers.append(worker)
        return worker

    def stop(self) -> None:
        for worker in [*self.orchestrators, *self.llm_workers]:
            worker.stop()
        self.client.close()
        self.server.stop()


def documents(n: int) -> tuple[list[Document], dict[str, str]]:
    codes = {f"doc-{i:03d}": f"FLT-{i}-{uuid.uuid4().hex[:4]}" for i in range(n)}
    docs = [
        Document(id=doc_id, context=needle_context(CHUNKS_PER_DOC, code, i % CHUNKS_PER_DOC))
        for i, (doc_id, code) in enumerate(codes.items())
    ]
    return docs, codes


def run_batch(
    cluster: FaultCluster,
    docs: list[Document],
    codes: dict[str, str],
    fault: Callable[[], None] | None,
    faults: int,
    spacing_s: float,
) -> dict[str, Any]:
    """One batch, with ``fault`` applied ``faults`` times ``spacing_s`` apart from the start."""
    before = len(cluster.provider.requests())
    started = time.monotonic()
    batch, _ = cluster.submitter.submit_batch(
        docs, "What is the secret code?", model="scripted/needle"
    )
    done = 0
    next_fault = started + spacing_s
    deadline = started + 900
    while True:
        progress = batch.progress()
        if progress["finished"] == progress["total"]:
            break
        now = time.monotonic()
        if fault is not None and done < faults and now >= next_fault:
            fault()
            done += 1
            next_fault = now + spacing_s
        if now > deadline:
            raise TimeoutError(f"batch {batch.id}: {progress}")
        time.sleep(0.1)
    wall_s = time.monotonic() - started
    rows = list(batch.results())
    requests = cluster.provider.requests()[before:]
    correct = sum(1 for r in rows if r["status"] == "COMPLETED" and r["answer"] == codes[r["id"]])
    return {
        "wall_s": wall_s,
        "documents": len(docs),
        "rows": len(rows),
        "correct": correct,
        "faults": done,
        "root_calls": sum(1 for r in requests if r.role == "root" and r.outcome == "ok"),
        "sub_calls": sum(1 for r in requests if r.role == "sub" and r.outcome == "ok"),
    }


def run(ctx: RunContext) -> dict[str, Any]:
    provider = ctx.cluster.provider
    assert provider is not None
    n_docs = ctx.size(40, 4)
    faults = ctx.size(6, 1)
    provider.configure(root_latency_s=ROOT_LATENCY_S, sub_latency_s=SUB_LATENCY_S)
    cluster = FaultCluster(ctx, provider)
    runs: dict[str, dict[str, Any]] = {}
    try:
        for _ in range(2):
            cluster.start_orchestrator()
            cluster.start_llm_worker()
        docs, codes = documents(n_docs)
        runs["calm"] = run_batch(cluster, docs, codes, None, 0, 1.0)
        spacing = runs["calm"]["wall_s"] / (faults + 1)
        log.info("s9: calm run %.1f s; faults every %.1f s", runs["calm"]["wall_s"], spacing)

        def kill_orchestrator() -> None:
            victim = cluster.orchestrators.pop(0)
            victim.kill()
            cluster.start_orchestrator()  # as a supervisor restarts it

        def kill_llm_worker() -> None:
            victim = cluster.llm_workers.pop(0)
            victim.kill()
            cluster.start_llm_worker()

        def kill_redis() -> None:
            cluster.server.kill()
            time.sleep(1.0)  # down for a moment, as a crashed Redis is while it restarts
            cluster.server.restart()

        for name, fault in (
            ("orchestrator killed", kill_orchestrator),
            ("llm worker killed", kill_llm_worker),
            ("Redis killed and restarted", kill_redis),
        ):
            docs, codes = documents(n_docs)
            runs[name] = run_batch(cluster, docs, codes, fault, faults, spacing)
            log.info("s9: %s: %s", name, runs[name])
    finally:
        provider.configure(root_latency_s=0, sub_latency_s=0)
        cluster.stop()
    calm = runs["calm"]
    metrics: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for name, data in runs.items():
        metrics[f"{name}: correct answers"] = {"median": data["correct"], "unit": "answers"}
        metrics[f"{name}: wall time"] = {"median": data["wall_s"], "unit": "s"}
        for kind in ("root_calls", "sub_calls"):
            metrics[f"{name}: {kind.replace('_', ' ')}"] = {"median": data[kind], "unit": "calls"}
        if name == "calm":
            continue
        root = stats.ratio(data["root_calls"], calm["root_calls"])
        sub = stats.ratio(data["sub_calls"], calm["sub_calls"])
        wall = stats.ratio(data["wall_s"], calm["wall_s"])
        metrics[f"{name}: root calls / calm"] = {"median": root, "unit": "x"}
        metrics[f"{name}: sub-calls / calm"] = {"median": sub, "unit": "x"}
        metrics[f"{name}: wall time / calm"] = {"median": wall, "unit": "x"}
        targets[f"{name}: every answer right, one row each"] = stats.target(
            float(data["correct"] == data["documents"] == data["rows"]), 1.0, at_least=True
        )
        targets[f"{name}: root calls <= {ROOT_CALLS_LIMIT} x calm"] = stats.target(
            root, ROOT_CALLS_LIMIT
        )
        targets[f"{name}: sub-calls <= {SUB_CALLS_LIMIT} x calm"] = stats.target(
            sub, SUB_CALLS_LIMIT
        )
        if name == "llm worker killed":
            targets[f"{name}: wall time <= {LLM_WORKER_WALL_LIMIT} x calm"] = stats.target(
                wall, LLM_WORKER_WALL_LIMIT
            )
    return result(
        "Faults: dead workers and a dead Redis, against the same batch run calm",
        config={
            "documents": n_docs,
            "faults_per_run": faults,
            "orchestrators": "2 x 8 threads",
            "llm_workers": "2 x 16 threads",
            "root_latency_s": ROOT_LATENCY_S,
            "sub_latency_s": SUB_LATENCY_S,
            "redis": "AOF (appendfsync everysec)",
            "background_calls": BACKGROUND_CALLS,
        },
        metrics=metrics,
        targets=targets,
        notes=[
            "A killed worker is replaced at once (a supervisor's restart); its jobs resume "
            "by replay once their lease (lease_ttl_s, 30 s) lapses, so orchestrator kills "
            "cost wall time by design; llm worker kills cost a claim's TTL (6 s).",
            "Redis is down about a second per kill; workers and sandboxes wait for it.",
            "Root calls are background responses: a killed llm worker's root calls in "
            "flight are fetched by id by the worker that takes them over; sub-calls (0.3 s) "
            "are ordinary calls, and those in flight are asked again.",
        ],
        plot={"kind": "faults", "runs": runs},
    )
