"""Redis crashes (SIGKILL) and comes back on its AOF under a running batch: nothing is lost.

Real `celery -A workers worker` processes (2 orchestrators, 2 llm workers, threads pools),
real sandboxes, the scripted provider with latency. Redis is killed at the moments that
matter: while jobs wait in the queue, and while cells wait on their sub-calls. Every job
must end once with the right answer, without a person stepping in, every worker must
still be running, and no model call may be paid twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rlm_jobs.models import JobStatus
from rlm_jobs.submitter import BatchHandle, Document
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import Cluster, needle_context, runtime_pids, wait_for, wait_sandboxes_gone
from tests.support.faults import CrashableRedis, while_redis_is_up
from workers.names import LLM_QUEUE, ORCHESTRATE_QUEUE

pytestmark = pytest.mark.timeout(300)

DOCUMENTS = 12
CHUNKS = 6  # per document: one sub-call each
ROOT_TURNS = 3  # the needle policy: measure, search, answer


@pytest.fixture
def cluster(
    crashable_redis: CrashableRedis, scripted_provider: ScriptedProvider, tmp_path: Path
) -> Iterator[Cluster]:
    c = Cluster(crashable_redis.server, scripted_provider, tmp_path)
    # Every progress report reaches Redis: the test watches for cells waiting on sub-calls.
    c.env["RLM_JOBS_PROGRESS_INTERVAL_S"] = "0"
    yield c
    c.stop()
    wait_sandboxes_gone(c.marker)


def _queued_while_others_run(batch: BatchHandle) -> bool:
    progress = batch.progress()
    return progress["queued"] > 0 and progress["running"] > 0


def _a_cell_waits_on_sub_calls(batch: BatchHandle) -> bool:
    return any(job.progress().get("subcalls_in_flight", 0) > 0 for job in batch.jobs())


def _wait_or_describe(
    cluster: Cluster, batch: BatchHandle, condition: Callable[[], object], what: str
) -> None:
    """``wait_for`` whose failure shows where every job of the batch stands."""
    try:
        wait_for(while_redis_is_up(condition), 60, what)
    except AssertionError as exc:
        states = [
            f"{job.id}: {job.status().value} {json.dumps(job.progress(), sort_keys=True)}"
            for job in batch.jobs()
        ]
        stuck = [job.id for job in batch.jobs() if not job.status().finished]
        details = [cluster.describe(job_id, max_chars=2000) for job_id in stuck[:3]]
        logs = [f"[{w.name}] ...{w.log()[-1500:]}" for w in cluster.workers]
        raise AssertionError("\n".join([str(exc), *states, *details, *logs])) from None


def _between_turns(batch: BatchHandle) -> bool:
    """Some job is past its first turn with no sub-call out: it waits on its root model."""
    for job in batch.jobs():
        progress = job.progress()
        if progress.get("iteration", 0) >= 1 and progress.get("subcalls_in_flight", 1) == 0:
            return job.status() is JobStatus.RUNNING
    return False


def test_a_batch_rides_out_redis_crashes_and_restarts(
    cluster: Cluster, crashable_redis: CrashableRedis
) -> None:
    # Given a cluster as the README runs it, and a batch larger than its orchestrator slots
    # (sub-calls slow enough that a cell waiting on them is seen however busy the machine)
    cluster.provider.configure(root_latency_s=0.5, sub_latency_s=0.5)
    workers = [cluster.start(ORCHESTRATE_QUEUE, concurrency=4) for _ in range(2)]
    workers += [cluster.start(LLM_QUEUE, concurrency=16) for _ in range(2)]
    docs = [
        Document(id=f"doc-{i}", context=needle_context(CHUNKS, f"RR-{i}", i % CHUNKS))
        for i in range(DOCUMENTS)
    ]
    batch, started = cluster.submitter.submit_batch(
        docs, "What is the secret code?", model="scripted/needle"
    )
    assert started == DOCUMENTS

    # When Redis is killed while jobs wait in the queue, twice while cells wait on their
    # sub-calls, and between turns, coming back on its AOF each time
    def crash_when(condition: Callable[[], object], what: str) -> None:
        _wait_or_describe(cluster, batch, condition, what)
        crashable_redis.crash_and_restart(down_s=0.5)

    crash_when(lambda: _queued_while_others_run(batch), "jobs queued behind running ones")
    for _ in range(2):
        crash_when(lambda: _a_cell_waits_on_sub_calls(batch), "a cell waiting on its sub-calls")
    crash_when(lambda: _between_turns(batch), "a job between turns")

    # Then every job completes with its own document's answer, without anyone stepping in
    try:
        progress = batch.wait(timeout_s=180)
    except TimeoutError:
        unfinished = [job.id for job in batch.jobs() if not job.status().finished]
        pytest.fail("\n".join(cluster.describe(job_id) for job_id in unfinished))
    rows = list(batch.results())
    wrong = [row["job_id"] for row in rows if row["answer"] != f"RR-{row['id'][4:]}"]
    evidence = "\n".join(cluster.describe(job_id) for job_id in wrong)
    assert progress["by_status"] == {JobStatus.COMPLETED.value: DOCUMENTS}, evidence
    answers = {row["id"]: row["answer"] for row in rows}
    assert answers == {f"doc-{i}": f"RR-{i}" for i in range(DOCUMENTS)}, evidence
    # ... once each: one run per job, none restarted, one result written
    for job in batch.jobs():
        record = job.record()
        assert record.attempts == 1, f"job {job.id} was restarted"
        assert cluster.log_count(f"job {job.id}: COMPLETED") == 1
    # ... with nothing paid twice: the provider saw exactly the calm run's calls
    roles = [r.role for r in cluster.provider.requests()]
    assert roles.count("root") == DOCUMENTS * ROOT_TURNS
    assert roles.count("sub") == DOCUMENTS * CHUNKS
    # ... and every worker lived through it
    assert crashable_redis.crashes == 4
    for worker in workers:
        assert worker.alive(), f"{worker.name} exited:\n{worker.log()[-3000:]}"
        assert "Unrecoverable error" not in worker.log()


def test_a_worker_stopped_while_redis_is_down_ends_with_its_sandboxes(
    cluster: Cluster, crashable_redis: CrashableRedis
) -> None:
    # Given an orchestrator that ran a job (its warm pool of sandboxes is up)
    orchestrator = cluster.start(ORCHESTRATE_QUEUE, concurrency=2)
    cluster.start(LLM_QUEUE, concurrency=4)
    context = needle_context(2, "RD-1", 1)
    handle = cluster.submitter.submit("What is the secret code?", context, model="scripted/needle")
    assert handle.wait(timeout_s=60).status is JobStatus.COMPLETED
    wait_for(lambda: runtime_pids(cluster.marker), 30, "the warm pool's sandboxes")
    # When Redis dies for good and the worker is stopped (a deploy during an outage)
    crashable_redis.crash()
    try:
        os.killpg(orchestrator.proc.pid, signal.SIGTERM)
        # Then it ends, with its sandboxes, well before one Redis command would have
        # waited out the outage (redis_retry_s): their teardowns skip what needs Redis
        try:
            orchestrator.proc.wait(timeout=cluster.settings.redis_retry_s * 0.75)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not end with Redis down:\n{orchestrator.log()[-3000:]}")
        wait_sandboxes_gone(cluster.marker)
        assert "Redis does not answer: stopping this worker's sandboxes" in orchestrator.log()
    finally:
        crashable_redis.restart()  # for the cluster's own teardown
