"""The service end to end: real Redis, real `celery -A workers worker` processes, real HTTP.

Each test starts the workers it needs (pool sizes and timeouts are part of the scenario)
and the scripted provider in this process; workers reach it over HTTP like a real API.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rlm_jobs import keys
from rlm_jobs.errors import SpecError
from rlm_jobs.models import JobStatus, Limits
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.submitter import Document
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import Cluster, needle_context, runtime_pids, wait_for, wait_sandboxes_gone
from workers.names import LLM_TASK, ORCHESTRATE_QUEUE, RUN_JOB_TASK

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def provider() -> Iterator[ScriptedProvider]:
    with ScriptedProvider() as scripted:
        yield scripted


@pytest.fixture
def cluster(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    provider: ScriptedProvider,
    tmp_path: Path,
) -> Iterator[Cluster]:
    c = Cluster(redis_server, provider, tmp_path)
    yield c
    c.stop()
    # Nothing a job started may outlive the workers.
    wait_sandboxes_gone(c.marker)


def test_a_job_runs_end_to_end_with_sub_calls_on_the_llm_pool(cluster: Cluster) -> None:
    cluster.start(ORCHESTRATE_QUEUE)
    cluster.start("rlm.llm", concurrency=16)
    handle = cluster.submitter.submit(
        "What is the secret code?", needle_context(6, "QX-42", 4), model="scripted/needle"
    )
    record = handle.wait(timeout_s=60)
    row = record.row()
    assert row["status"] == "COMPLETED" and row["answer"] == "QX-42"
    ledger = cluster.provider.ledger()["scripted/needle"]
    assert row["usage"]["calls"] == ledger.calls
    assert row["usage"]["input_tokens"] == ledger.input_tokens
    assert row["usage"]["output_tokens"] == ledger.output_tokens
    trajectory = handle.trajectory()
    assert trajectory[0]["type"] == "metadata"
    calls = [c for e in trajectory[1:] for b in e["code_blocks"] for c in b["result"]["rlm_calls"]]
    assert len(calls) == 6 and all(c["worker"] for c in calls)


def test_fan_out_spreads_one_batch_over_several_workers(cluster: Cluster) -> None:
    n, latency_s = 40, 0.2
    cluster.provider.configure(sub_latency_s=latency_s)
    cluster.start(ORCHESTRATE_QUEUE)
    cluster.start("rlm.llm", concurrency=20)
    cluster.start("rlm.llm", concurrency=20)
    handle = cluster.submitter.submit(
        "What is the secret code?", needle_context(n, "FAN-7", 33), model="scripted/needle"
    )
    assert handle.wait(timeout_s=120).row()["answer"] == "FAN-7"
    blocks = [b for e in handle.trajectory()[1:] for b in e["code_blocks"]]
    fan_out = next(b for b in blocks if len(b["result"]["rlm_calls"]) == n)
    sequential_s = n * latency_s
    # Dispatched one by one this cell would take 8 s; spread over 40 slots it takes ~0.2 s.
    assert fan_out["result"]["execution_time"] < sequential_s / 4
    workers = {c["worker"] for c in fan_out["result"]["rlm_calls"]}
    assert len(workers) > 1


def test_recursion_cannot_deadlock_a_full_orchestrator_pool(cluster: Cluster) -> None:
    cluster.start(ORCHESTRATE_QUEUE, concurrency=2)
    cluster.start("rlm.llm", concurrency=16)
    text = "The river runs north. " * 400  # long enough for the recurse policy to split
    handles = [
        cluster.submitter.submit(
            f"Summarise part {i}", text, model="scripted/recurse", limits=Limits(max_depth=1)
        )
        for i in range(6)
    ]
    try:
        records = [h.wait(timeout_s=180) for h in handles]
    except TimeoutError:
        pytest.fail("\n".join(cluster.describe(h.id) for h in handles if not h.status().finished))
    assert [r.status for r in records] == [JobStatus.COMPLETED] * 6
    for handle in handles:
        children = cluster.submitter.store.children(handle.id)
        assert len(children) == 3
        child_records = [cluster.submitter.store.get(c) for c in children]
        assert all(r.status is JobStatus.COMPLETED for r in child_records)
        # Children run inside their root's execution: the reaper must never requeue them.
        assert [r.attempts for r in child_records] == [1, 1, 1]


def test_a_job_longer_than_the_visibility_timeout_runs_once(cluster: Cluster) -> None:
    cluster.provider.configure(root_latency_s=1.0)
    short = {"RLM_JOBS_VISIBILITY_TIMEOUT_S": "1", "RLM_JOBS_BROKER_RESTORE_INTERVAL_S": "1"}
    cluster.start(ORCHESTRATE_QUEUE, **short)
    cluster.start(ORCHESTRATE_QUEUE, **short)
    cluster.start("rlm.llm")
    handle = cluster.submitter.submit(
        "keep going", "some context", model="scripted/stall", limits=Limits(max_iterations=5)
    )
    record = handle.wait(timeout_s=90)
    assert record.status is JobStatus.MAX_ITERATIONS
    assert record.attempts == 1
    metadata = [e for e in handle.trajectory() if e["type"] == "metadata"]
    assert len(metadata) == 1
    # The broker did deliver it again (6 s job, 1 s timeout); the lease turned it away.
    assert cluster.log_count(f"job {handle.id}: skipped: job {handle.id} is running") >= 1
    assert cluster.log_count(f"job {handle.id}: MAX_ITERATIONS") == 1


def test_a_killed_orchestrator_s_job_is_resumed_by_a_live_one(cluster: Cluster) -> None:
    cluster.provider.configure(root_latency_s=0.5)
    first = cluster.start(ORCHESTRATE_QUEUE)
    cluster.start("rlm.llm")
    handle = cluster.submitter.submit(
        "keep going", "some context", model="scripted/stall", limits=Limits(max_iterations=6)
    )
    wait_for(lambda: handle.progress().get("iteration", 0) >= 2, 30, "the job to be under way")
    first.kill()
    assert handle.status() is JobStatus.RUNNING
    cluster.start(ORCHESTRATE_QUEUE)
    record = handle.wait(timeout_s=90)
    assert record.status is JobStatus.MAX_ITERATIONS
    assert record.attempts == 2
    assert len([e for e in handle.trajectory() if e["type"] == "metadata"]) == 1


def test_cancelling_a_job_a_parent_and_a_batch(cluster: Cluster) -> None:
    cluster.provider.configure(root_latency_s=0.3, sub_latency_s=0.3)
    cluster.start(ORCHESTRATE_QUEUE, concurrency=4)
    cluster.start("rlm.llm")
    lone = cluster.submitter.submit("go", "ctx", model="scripted/stall")
    parent = cluster.submitter.submit(
        "Summarise", "The river runs north. " * 400, model="scripted/recurse",
        limits=Limits(max_depth=2),
    )  # fmt: skip
    batch, _ = cluster.submitter.submit_batch(
        [Document(id=f"d{i}", context="ctx") for i in range(4)], "go", model="scripted/stall"
    )
    wait_for(lambda: lone.status() is JobStatus.RUNNING, 30, "the lone job to start")
    wait_for(lambda: cluster.submitter.store.children(parent.id), 30, "the parent's children")
    lone.cancel()
    parent.cancel()
    batch.cancel()
    assert lone.wait(timeout_s=30).status is JobStatus.CANCELLED
    assert parent.wait(timeout_s=30).status is JobStatus.CANCELLED
    children = cluster.submitter.store.children(parent.id)
    for child in children:
        wait_for(lambda c=child: cluster.submitter.store.get(c).status.finished, 30, "child end")
    statuses = {cluster.submitter.store.get(c).status for c in children}
    assert JobStatus.CANCELLED in statuses and JobStatus.RUNNING not in statuses
    assert batch.wait(timeout_s=30)["by_status"] == {"CANCELLED": 4}
    # Every job's sandbox is gone; only the worker's warm pool (no context, no job) remains.
    pool_size = cluster.settings.sandbox_pool_size
    wait_for(
        lambda: len(runtime_pids(cluster.marker)) <= pool_size, 15, "the jobs' sandboxes to stop"
    )


def test_cancelling_a_job_stops_its_background_root_call_at_the_provider(
    cluster: Cluster,
) -> None:
    # Given root calls made as background responses, one of which the provider takes a
    # minute to generate
    background = {"RLM_JOBS_BACKGROUND_CALLS": "root"}
    cluster.provider.configure(root_latency_s=60)
    cluster.start(ORCHESTRATE_QUEUE, concurrency=2, **background)
    cluster.start("rlm.llm", concurrency=2, **background)
    handle = cluster.submitter.submit("go", "ctx", model="scripted/stall")

    def polled() -> bool:  # accepted, its id kept, and the worker waiting for it
        entry = cluster.provider.ledger().get("scripted/stall")
        return entry is not None and entry.retrievals >= 1

    wait_for(polled, 30, "the root call to be polled")
    # When the job is cancelled meanwhile
    handle.cancel()
    assert handle.wait(timeout_s=30).status is JobStatus.CANCELLED

    # Then the llm worker stops waiting for that response and cancels it at the provider,
    # instead of paying for it to the end
    def cancellations() -> int:
        entry = cluster.provider.ledger().get("scripted/stall")
        return 0 if entry is None else entry.cancellations

    wait_for(cancellations, 15, "the response to be cancelled")
    assert [r.wire for r in cluster.provider.requests()] == ["responses"]


def test_progress_reaches_the_event_stream_flower_reads(cluster: Cluster) -> None:
    seen: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []
    receivers: list[Any] = []

    def listen() -> None:
        with cluster.app.connection_for_read() as connection:
            handlers = {"task-progress": seen.append, "task-sent": sent.append}
            handlers["task-received"] = received.append
            receiver = cluster.app.events.Receiver(connection, handlers=handlers)
            receivers.append(receiver)
            # Checks receiver.should_stop about once a second.
            receiver.capture(limit=None, timeout=None, wakeup=False)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    wait_for(lambda: receivers, 10, "the event receiver")
    cluster.start(ORCHESTRATE_QUEUE)
    cluster.start("rlm.llm")
    handle = cluster.submitter.submit(
        "What is the secret code?", needle_context(3, "EV-1", 1), model="scripted/needle"
    )
    handle.wait(timeout_s=60)
    try:
        wait_for(lambda: any(e.get("iteration", 0) >= 2 for e in seen), 20, "progress events")
        # Flower lists every task, the llm tasks too (from task-received); only the
        # orchestrate task is announced when sent (jobs waiting in the queue show up).
        wait_for(lambda: {e["name"] for e in received} == {RUN_JOB_TASK, LLM_TASK}, 20, "tasks")
    finally:
        receivers[0].should_stop = True
        listener.join(timeout=10)
    event = next(e for e in seen if e.get("iteration", 0) >= 2)
    assert event["state"] == "PROGRESS" and event["job_id"] == handle.id
    assert {"subcalls_done", "subcalls_in_flight", "tokens", "cost_usd", "depth"} <= set(event)
    assert {e["name"] for e in sent} == {RUN_JOB_TASK}


def test_bad_input_fails_alone_and_the_worker_carries_on(cluster: Cluster) -> None:
    orchestrator = cluster.start(ORCHESTRATE_QUEUE)
    cluster.start("rlm.llm")
    submitter = cluster.submitter
    with pytest.raises(SpecError, match="model"):
        submitter.submit("q", "ctx", model="gpt4")
    with pytest.raises(SpecError, match="query"):
        submitter.submit("x" * 200_000, "ctx")
    with pytest.raises(SpecError, match="unknown provider 'nope'"):
        submitter.submit("q", "ctx", model="nope/x")
    assert cluster.client.keys("rlm:job:*") == []  # refused jobs leave nothing behind
    unknown = submitter.submit("q", "ctx", model="scripted/no-such-model")
    # A record whose spec was corrupted in Redis, and messages no submitter would send.
    cluster.client.hset(keys.job("corrupt"), mapping={"spec": "{not json", "status": "QUEUED"})
    cluster.app.send_task(RUN_JOB_TASK, args=["corrupt"], queue=ORCHESTRATE_QUEUE)
    cluster.app.send_task(RUN_JOB_TASK, args=[{"job": 1}], queue=ORCHESTRATE_QUEUE)
    cluster.app.send_task(RUN_JOB_TASK, args=["no-such-job"], queue=ORCHESTRATE_QUEUE)
    good = submitter.submit(
        "What is the secret code?", needle_context(2, "OK-9", 1), model="scripted/needle"
    )
    record = unknown.wait(timeout_s=60)
    assert record.status is JobStatus.FAILED and "no-such-model" in record.fields["reason"]
    corrupt = wait_for(lambda: submitter.store.get("corrupt").result, 30, "the corrupt job to fail")
    assert "invalid job spec" in corrupt.reason  # type: ignore[attr-defined]
    assert good.wait(timeout_s=60).row()["answer"] == "OK-9"
    assert orchestrator.alive()
    assert "rejected" in orchestrator.log()
