"""Provider controls on a real cluster: `celery -A workers worker` processes, real Redis,
the scripted provider over real HTTP, whose request log is the ground truth.

Rate limits, cool-downs, the response cache and batch budgets are shared by processes that
share nothing but Redis, so every test here runs several workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rlm_jobs.config import Settings
from rlm_jobs.models import JobStatus, Limits
from rlm_jobs.providers import BatchBudgets
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.store import JobRecord
from rlm_jobs.submitter import Document, JobHandle, Submitter
from rlm_jobs.testing.provider import ScriptedProvider
from rlm_jobs.testing.state import RequestRecord
from tests.support import Worker, wait_for, wait_sandboxes_gone
from workers.app import LLM_QUEUE, ORCHESTRATE_QUEUE, create_app
from workers.enqueue import celery_enqueuer

pytestmark = pytest.mark.timeout(300)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "docs"


def fan_out(n: int, tag: str) -> str:
    """Code for the scripted ``exec`` model: ``n`` distinct sub-calls, then their count."""
    return (
        f"ask = 'Question: which part?\\n\\nText:\\nThis is part {tag} '\n"
        f"prompts = [f'{{ask}}{{i}}.' for i in range({n})]\n"
        "replies = llm_query_batched(prompts)\n"
        "print(sum(r.startswith('This is') for r in replies))\n"
    )


class Cluster:
    def __init__(self, server: RedisServer, provider: ScriptedProvider, logdir: Path) -> None:
        self.provider = provider
        self.logdir = logdir
        self.workers: list[Worker] = []
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "RLM_JOBS_REDIS_URL": server.url,
            "RLM_JOBS_SANDBOX_REDIS_SOCKET": server.unix_socket,
            "RLM_JOBS_SCRIPTED_BASE_URL": provider.url,
        }
        self.settings = Settings(redis_url=server.url, scripted_base_url=provider.url)
        self.client = redis.Redis.from_url(server.url)
        self.submitter = Submitter(
            self.client, celery_enqueuer(self.settings, create_app(self.settings)), self.settings
        )

    def start(self, queue: str, concurrency: int = 4, **env: str) -> Worker:
        if queue == LLM_QUEUE:
            env.setdefault("RLM_JOBS_LLM_WORKER_CONCURRENCY", str(concurrency))
        worker = Worker(queue, {**self.env, **env}, self.logdir, concurrency=concurrency)
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def records(self, handles: list[JobHandle], timeout_s: float = 120) -> list[JobRecord]:
        return [h.wait(timeout_s=timeout_s) for h in handles]

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.client.close()


@pytest.fixture
def provider() -> Iterator[ScriptedProvider]:
    with ScriptedProvider() as scripted:
        yield scripted


@pytest.fixture
def cluster(
    redis_server: RedisServer, redis_client: redis.Redis, provider: ScriptedProvider, tmp_path: Path
) -> Iterator[Cluster]:
    c = Cluster(redis_server, provider, tmp_path)
    yield c
    c.stop()
    wait_sandboxes_gone(str(redis_server.workdir))


def busiest_second(requests: list[RequestRecord]) -> int:
    times = sorted(r.timestamp for r in requests)
    return max(sum(1 for u in times if t <= u < t + 1.0) for t in times)


def sub_calls(trajectory: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        call
        for entry in trajectory
        if entry.get("type") == "iteration"
        for block in entry["code_blocks"]
        for call in block["result"]["rlm_calls"]
    ]


def test_the_rate_limit_holds_for_root_and_sub_calls_over_two_llm_workers(
    cluster: Cluster,
) -> None:
    limit = {"RLM_JOBS_RATE_LIMITS": '{"scripted": {"rpm": 600}}'}  # 10 calls a second
    cluster.start(ORCHESTRATE_QUEUE, concurrency=4, **limit)
    cluster.start(LLM_QUEUE, concurrency=8, **limit)
    cluster.start(LLM_QUEUE, concurrency=8, **limit)
    handles = [
        cluster.submitter.submit(fan_out(15, f"job{j}"), "ctx", model="scripted/exec")
        for j in range(4)
    ]
    records = cluster.records(handles)
    assert [r.row()["answer"] for r in records] == ["15"] * 4
    requests = cluster.provider.requests()
    assert len(requests) == 4 * (2 + 15) and {r.outcome for r in requests} == {"ok"}
    # Root calls (the orchestrator) and sub-calls (both llm workers) share the one limit.
    assert {r.role for r in requests} == {"root", "sub"}
    assert len({r.worker for r in requests if r.role == "sub"}) == 2
    # Smooth: no second holds more than rpm/60 by 5% plus one call ...
    assert busiest_second(requests) <= int(10 * 1.05 + 1)
    # ... and the limit, not the cluster, set the pace.
    span = max(r.timestamp for r in requests) - min(r.timestamp for r in requests)
    assert span >= (len(requests) - 1) * 0.1 * 0.95
    # Waiting for a slot shows in the jobs' progress; none of them failed for it.
    waited = [cluster.submitter.job(h.id).progress().get("rate_limited_s", 0) for h in handles]
    assert sum(waited) > 1.0


def test_a_429_storm_cools_the_model_down_for_every_worker(cluster: Cluster) -> None:
    limit = {"RLM_JOBS_RATE_LIMITS": '{"scripted": {"rpm": 1200}}'}
    cluster.start(ORCHESTRATE_QUEUE, **limit)
    cluster.start(LLM_QUEUE, concurrency=8, **limit)
    cluster.start(LLM_QUEUE, concurrency=8, **limit)
    handle = cluster.submitter.submit(fan_out(60, "storm"), "ctx", model="scripted/exec")
    wait_for(
        lambda: sum(r.role == "sub" for r in cluster.provider.requests()) >= 6,
        60,
        "sub-calls to flow",
    )
    retry_after_s = 1.5
    cluster.provider.inject("429", 2, retry_after_s=retry_after_s)
    record = handle.wait(timeout_s=120)
    assert record.row()["answer"] == "60"
    requests = cluster.provider.requests()
    storms = [r.timestamp for r in requests if r.outcome == "429"]
    assert len(storms) == 2
    # After each 429 nothing reaches the provider, from either worker, until Retry-After
    # has passed; only calls already on the wire (within 0.2 s) may still arrive.
    for t in storms:
        during = [r for r in requests if t + 0.2 < r.timestamp < t + retry_after_s - 0.05]
        assert during == []
    after = [r for r in requests if r.timestamp >= max(storms) + retry_after_s - 0.05]
    assert len({r.worker for r in after if r.role == "sub"}) == 2
    assert sum(r.outcome == "ok" and r.role == "sub" for r in requests) == 60


def test_the_cache_serves_other_workers_and_a_rerun_batch_reaches_the_provider_zero_times(
    cluster: Cluster,
) -> None:
    docs = [Document(id=p.name, context=p.read_text()) for p in sorted(EXAMPLES.iterdir())[:3]]
    query = "What was the root cause of the incident?"
    cached = Limits(cache=True)
    first_workers = [cluster.start(ORCHESTRATE_QUEUE), cluster.start(LLM_QUEUE)]
    first, _ = cluster.submitter.submit_batch(docs, query, model="scripted/generic", limits=cached)
    first_rows = {r["id"]: r for r in _finished_rows(first.wait(timeout_s=120), first)}
    sent = len(cluster.provider.requests())
    ledger = cluster.provider.ledger()
    assert sent > 3 * 3 and all(r["status"] == "COMPLETED" for r in first_rows.values())
    # The workers that filled the cache are gone; new processes answer the rerun.
    for worker in first_workers:
        worker.stop()
    cluster.start(ORCHESTRATE_QUEUE)
    llm = cluster.start(LLM_QUEUE)
    again, _ = cluster.submitter.submit_batch(docs, query, model="scripted/generic", limits=cached)
    assert again.id != first.id
    rows = {r["id"]: r for r in _finished_rows(again.wait(timeout_s=120), again)}
    assert len(cluster.provider.requests()) == sent and cluster.provider.ledger() == ledger
    for doc_id, row in rows.items():
        before = first_rows[doc_id]["usage"]
        assert row["status"] == "COMPLETED" and row["answer"] == first_rows[doc_id]["answer"]
        assert (row["usage"]["calls"], row["usage"]["cost_usd"]) == (0, 0)
        assert row["usage"]["cached_calls"] == before["calls"]
        assert row["usage"]["cached_cost_usd"] == pytest.approx(before["cost_usd"])
        trajectory = cluster.submitter.job(row["job_id"]).trajectory()
        iterations = [e for e in trajectory if e["type"] == "iteration"]
        assert iterations and all(e.get("cached") for e in iterations)
        calls = sub_calls(trajectory)
        assert calls and all(c.get("cached") for c in calls)
        assert {c["worker"] for c in calls} == {f"{llm.name}@{os.uname().nodename}"}


def _finished_rows(progress: dict[str, Any], batch: Any) -> list[dict[str, Any]]:
    assert progress["finished"] == progress["total"]
    return list(batch.results())


def test_a_batch_budget_stops_the_batch_mid_way(cluster: Cluster) -> None:
    cluster.start(ORCHESTRATE_QUEUE, concurrency=1)
    cluster.start(ORCHESTRATE_QUEUE, concurrency=1)
    cluster.start(LLM_QUEUE, concurrency=8)
    text = (EXAMPLES / "inc-101-payments-tls.txt").read_text() * 40  # a few chunks to map
    query = "What was the root cause of the incident?"
    probe = cluster.submitter.submit(query, text, model="scripted/generic").wait(timeout_s=120)
    assert probe.status is JobStatus.COMPLETED
    job_cost = probe.row()["usage"]["cost_usd"]
    cap = 2.5 * job_cost
    cluster.provider.reset()
    docs = [Document(id=f"doc-{i}", context=text) for i in range(8)]
    batch, _ = cluster.submitter.submit_batch(
        docs, query, model="scripted/generic", batch_max_cost_usd=cap
    )
    progress = batch.wait(timeout_s=180)
    assert progress["finished"] == 8
    rows = list(batch.results())
    statuses = sorted(r["status"] for r in rows)
    assert statuses.count("COMPLETED") >= 2
    assert set(statuses) == {"COMPLETED", "BUDGET_EXCEEDED"}
    stopped = [r for r in rows if r["status"] == "BUDGET_EXCEEDED"]
    assert all(f"batch {batch.id}" in r["reason"] for r in stopped)
    # Jobs running when the cap was reached were stopped at their next call.
    assert any(r["iterations"] >= 1 for r in stopped)
    # Queued jobs ended without running: no sandbox turn, no call, no trajectory.
    never_ran = [r for r in stopped if r["iterations"] == 0]
    assert len(never_ran) >= 3
    assert all(r["usage"]["calls"] == 0 for r in never_ran)
    assert all(not cluster.submitter.job(r["job_id"]).trajectory() for r in never_ran)
    # Every call was counted, atomically, across both orchestrators and the llm worker.
    state = BatchBudgets(cluster.client).state(batch.id)
    assert state is not None
    spent = sum(r["usage"]["cost_usd"] for r in rows)
    ledger = cluster.provider.ledger()["scripted/generic"]
    assert state.cost_usd == pytest.approx(spent)
    assert state.tokens == ledger.input_tokens + ledger.output_tokens
    assert sum(r["usage"]["calls"] for r in rows) == ledger.calls
    # The cap was reached, and overshot by no more than what two running jobs had in flight.
    assert cap <= state.cost_usd <= cap + 2 * job_cost
