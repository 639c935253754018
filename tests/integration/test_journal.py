"""Jobs that survive their workers: real `celery -A workers worker` processes killed with
SIGKILL (or stopped warm with SIGTERM) at the moments that matter, the scripted provider's
own request log as the bill.

Every test checks the answer, that the job has exactly one result, and that the provider
was asked nothing twice beyond what was in flight when the worker died.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rlm_jobs import keys
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.submitter import JobHandle
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import Cluster, Worker, needle_context, wait_for, wait_sandboxes_gone
from workers.names import LLM_QUEUE, ORCHESTRATE_QUEUE

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def cluster(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[Cluster]:
    with ScriptedProvider() as provider:
        c = Cluster(redis_server, provider, tmp_path)
        yield c
        c.stop()
        wait_sandboxes_gone(c.marker)


def calls(cluster: Cluster, role: str) -> int:
    """Requests the provider answered for ``role`` ("root" or "sub")."""
    return sum(1 for r in cluster.provider.requests() if r.role == role and r.outcome == "ok")


def progress_iteration(handle: JobHandle) -> int:
    return int(handle.progress().get("iteration", 0))


def finished_once(handle: JobHandle, timeout_s: float = 90) -> dict[str, object]:
    """The job's one result row, after checking nothing wrote a second."""
    row = handle.wait(timeout_s=timeout_s).row()
    assert row["status"] == "COMPLETED", row
    return row


def resumed_notes(handle: JobHandle) -> list[str]:
    return [e["resumed"] for e in handle.trajectory() if e.get("resumed")]


def kill_and_replace(cluster: Cluster, victim: Worker) -> Worker:
    victim.kill()
    return cluster.start(ORCHESTRATE_QUEUE)


def submit_needle(cluster: Cluster, n_chunks: int = 6, code: str = "RS-1") -> JobHandle:
    return cluster.submitter.submit(
        "What is the secret code?",
        needle_context(n_chunks, code, n_chunks - 2),
        model="scripted/needle",
    )


# The needle job: 3 root replies (inspect, search with one batch of sub-calls, finish).
ROOT_CALLS = 3


def test_killed_during_a_root_call_the_job_resumes_and_repeats_only_that_call(
    cluster: Cluster,
) -> None:
    cluster.provider.configure(root_latency_s=1.0)
    orchestrator = cluster.start(ORCHESTRATE_QUEUE)
    cluster.start(LLM_QUEUE, concurrency=8)
    handle = submit_needle(cluster)

    def root_call_claimed() -> bool:  # taken by an llm worker: on its way to the provider
        return any(b".r." in k for k in cluster.client.keys(keys.subcall_claim("*")))

    # When the orchestrator dies while the second root call is in flight (not merely
    # placed in the journal: that one would be asked afresh, and paid once all the same)
    wait_for(lambda: progress_iteration(handle) >= 2, 30, "the second turn to start")
    wait_for(root_call_claimed, 30, "an llm worker to take the second root call")
    assert calls(cluster, "root") == 1
    kill_and_replace(cluster, orchestrator)
    # Then another orchestrator resumes it: both replies from the journal (the second was
    # in flight on an llm worker, which kept it), nothing asked twice
    row = finished_once(handle)
    assert row["answer"] == "RS-1"
    assert calls(cluster, "root") == ROOT_CALLS
    assert calls(cluster, "sub") == 6
    assert row["attempts"] == 2
    assert any("2 steps replayed" in n for n in resumed_notes(handle)), resumed_notes(handle)
    # Usage is counted once per call
    assert row["usage"]["calls"] == ROOT_CALLS + 6


def test_killed_in_a_cell_waiting_on_a_batch_no_sub_call_is_paid_twice(cluster: Cluster) -> None:
    # Given a batch of 6 sub-calls answered two at a time, 1 s each
    cluster.provider.configure(root_latency_s=0.2, sub_latency_s=1.0)
    orchestrator = cluster.start(ORCHESTRATE_QUEUE)
    cluster.start(LLM_QUEUE, concurrency=2, RLM_JOBS_LLM_WORKER_CONCURRENCY="2")
    handle = submit_needle(cluster, code="BATCH-9")
    # When the orchestrator dies with some of the batch answered and the rest in flight
    wait_for(lambda: calls(cluster, "sub") >= 2, 30, "two sub-calls answered")
    kill_and_replace(cluster, orchestrator)
    # Then the resumed cell gets the earlier answers from the journal, and the answers that
    # arrived while no orchestrator waited (the llm worker kept going) are not asked again
    row = finished_once(handle)
    assert row["answer"] == "BATCH-9"
    assert calls(cluster, "sub") == 6
    assert calls(cluster, "root") == ROOT_CALLS
    assert row["usage"]["calls"] == ROOT_CALLS + 6


def test_killed_between_turns_the_finished_turns_are_not_paid_again(cluster: Cluster) -> None:
    cluster.provider.configure(root_latency_s=1.0)
    orchestrator = cluster.start(ORCHESTRATE_QUEUE)
    cluster.start(LLM_QUEUE, concurrency=8)
    handle = submit_needle(cluster, code="TURN-3")
    # Right after the second turn's cell got its answers: the third turn has just begun
    wait_for(lambda: calls(cluster, "sub") == 6, 30, "the batch to be answered")
    kill_and_replace(cluster, orchestrator)
    row = finished_once(handle)
    assert row["answer"] == "TURN-3"
    assert calls(cluster, "sub") == 6
    assert calls(cluster, "root") == ROOT_CALLS  # the third, in flight, kept by its worker


def test_killed_during_child_rlms_finished_children_are_not_run_again(cluster: Cluster) -> None:
    # Given a root that hands three parts to child RLMs, each answering with a sub-call
    cluster.provider.configure(root_latency_s=0.5, sub_latency_s=0.5)
    orchestrator = cluster.start(ORCHESTRATE_QUEUE, RLM_JOBS_CHILD_CONCURRENCY="1")
    cluster.start(LLM_QUEUE, concurrency=8)
    text = "\n".join(
        f"Line {i}: the secret code is CHILD-{i}." if i == 77 else f"Line {i}: nothing here."
        for i in range(120)
    )
    handle = cluster.submitter.submit("What is the secret code?", text, model="scripted/recurse")
    calm_children = 3
    # When the orchestrator dies after the first child finished, while the second runs
    wait_for(
        lambda: len(cluster.client.hkeys(keys.job_calls(handle.id))) >= 1,
        60,
        "the first child's result",
    )
    root_before, sub_before = calls(cluster, "root"), calls(cluster, "sub")
    kill_and_replace(cluster, orchestrator)
    row = finished_once(handle)
    assert "CHILD-77" in str(row["answer"])
    # The finished child is not run again; the one running resumes from its own journal,
    # and its calls in flight were kept by the llm worker running them: nothing twice.
    children = cluster.submitter.store.children(handle.id)
    assert len(children) == calm_children
    root_after, sub_after = calls(cluster, "root"), calls(cluster, "sub")
    calm_root = 2 + calm_children * 2  # the root's two turns, two per child
    assert root_after == calm_root
    assert sub_after == calm_children
    assert root_before + sub_before < root_after + sub_after


def test_llm_worker_killed_holding_chunks_the_job_goes_on_within_seconds(
    cluster: Cluster,
) -> None:
    cluster.provider.configure(root_latency_s=0.2, sub_latency_s=1.0)
    cluster.start(ORCHESTRATE_QUEUE)
    doomed = cluster.start(LLM_QUEUE, concurrency=4, RLM_JOBS_LLM_WORKER_CONCURRENCY="4")
    handle = submit_needle(cluster, n_chunks=8, code="LLM-5")
    wait_for(lambda: calls(cluster, "sub") >= 1, 30, "the batch to be under way")
    started = time.monotonic()
    doomed.kill()
    cluster.start(LLM_QUEUE, concurrency=4, RLM_JOBS_LLM_WORKER_CONCURRENCY="4")
    row = finished_once(handle)
    took = time.monotonic() - started
    assert row["answer"] == "LLM-5"
    # Only the calls the dead worker had in flight (its 4 slots) were asked twice; the job
    # waited seconds (the claim's TTL), not the broker's visibility timeout (an hour).
    assert 8 <= calls(cluster, "sub") <= 8 + 4
    assert ROOT_CALLS <= calls(cluster, "root") <= ROOT_CALLS + 1  # one, if it ran there
    assert took < 30


def test_llm_worker_killed_during_a_background_root_call_leaves_it_to_the_next(
    cluster: Cluster,
) -> None:
    # Given root calls made as background responses, and an llm worker killed while the
    # provider generates the first one (accepted, its id kept with the call)
    background = {"RLM_JOBS_BACKGROUND_CALLS": "root"}
    cluster.provider.configure(root_latency_s=3.0)
    cluster.start(ORCHESTRATE_QUEUE, **background)
    doomed = cluster.start(LLM_QUEUE, concurrency=4, **background)
    handle = submit_needle(cluster, code="BG-7")

    def kept_response() -> bool:
        records = [k for k in cluster.client.keys(keys.subcall("*")) if not k.endswith(b":claim")]
        return any(cluster.client.hget(r, "response") for r in records)

    wait_for(kept_response, 30, "the first root call to be accepted")
    doomed.kill()
    # (before the provider could have answered it to the dead worker)
    assert time.time() < cluster.provider.requests()[0].timestamp + 3.0
    cluster.start(LLM_QUEUE, concurrency=4, **background)
    # Then the job finishes, and the root call the dead worker was waiting for was fetched
    # by the next worker, not asked again: every call paid once
    row = finished_once(handle)
    assert row["answer"] == "BG-7"
    assert calls(cluster, "root") == ROOT_CALLS
    assert calls(cluster, "sub") == 6
    assert [r.wire for r in cluster.provider.requests() if r.role == "root"] == ["responses"] * 3


def test_a_warm_shutdown_hands_running_jobs_back_at_once(cluster: Cluster) -> None:
    # Given two orchestrators and a lease long enough that only a hand-over is quick
    cluster.provider.configure(root_latency_s=1.0)
    orchestrators = [cluster.start(ORCHESTRATE_QUEUE, RLM_JOBS_LEASE_TTL_S="60") for _ in "ab"]
    cluster.start(LLM_QUEUE, concurrency=8)
    handle = submit_needle(cluster, code="WARM-2")
    wait_for(lambda: progress_iteration(handle) >= 2, 30, "the second turn to start")
    holder = cluster.submitter.store.lease_holder(handle.id) or ""
    (leaving,) = [w for w in orchestrators if f":{w.proc.pid}:" in holder]
    # When the one running it is told to stop (a scale-down, a deploy)
    stopped_at = time.monotonic()
    os.kill(leaving.proc.pid, signal.SIGTERM)  # as `docker stop` signals a container's PID 1
    leaving.proc.wait(timeout=30)
    # Then it exits quickly, and the other resumes the job from its journal long before
    # the 60 s lease could have expired
    assert time.monotonic() - stopped_at < 15
    row = finished_once(handle, timeout_s=40)
    assert row["answer"] == "WARM-2"
    assert time.monotonic() - stopped_at < 40
    assert row["attempts"] == 1  # a hand-over is not a failed attempt
    assert "handed over" in leaving.log()
    assert calls(cluster, "root") == ROOT_CALLS
    assert calls(cluster, "sub") == 6


def test_a_cell_that_depends_on_the_time_resumes_correctly_and_says_so(cluster: Cluster) -> None:
    cluster.provider.configure(root_latency_s=1.0)
    orchestrator = cluster.start(ORCHESTRATE_QUEUE)
    cluster.start(LLM_QUEUE, concurrency=4)
    handle = cluster.submitter.submit(
        "What is the secret code?",
        "padding. The secret code is TIME-8. more padding.",
        model="scripted/clock",
    )
    # Killed after the timed sub-call was answered, during the second root call
    wait_for(lambda: calls(cluster, "sub") == 1, 30, "the timed sub-call")
    kill_and_replace(cluster, orchestrator)
    row = finished_once(handle)
    assert row["answer"] == "TIME-8"
    # The rerun cell asked at another time: not in the journal, so asked live (twice in all)
    assert calls(cluster, "sub") == 2
    notes = resumed_notes(handle)
    assert len(notes) == 1 and "replay ended at step 2" in notes[0], notes
