"""The process-wide lease keeper against a real Redis, and in a real orchestrator worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rlm_jobs import keys
from rlm_jobs.engine import JobControl
from rlm_jobs.models import JobStatus, Limits, UsageMeter
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.store import Store
from rlm_jobs.testing.provider import ScriptedProvider
from sandbox.records import CellResult
from tests.support import Cluster, wait_for
from workers.leases import KEEPER_THREAD_NAME, JobLease, LeaseKeeper
from workers.names import ORCHESTRATE_QUEUE

pytestmark = pytest.mark.timeout(240)

TTL_S = 1.0
RENEW_S = 0.2


class RecordingRepl:
    """Stands in for a job's sandbox: all the keeper may do to it is close it."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def run_cell(self, code: str, *, timeout_s: float, max_output_chars: int) -> CellResult:
        return CellResult(stdout="", stderr="")

    def close(self) -> None:
        self.closed.set()


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    return Store(redis_client)


@pytest.fixture
def keeper(store: Store) -> Iterator[LeaseKeeper]:
    lease_keeper = LeaseKeeper(store, ttl_s=TTL_S, renew_s=RENEW_S)
    yield lease_keeper
    lease_keeper.close()


def start_job(store: Store, keeper: LeaseKeeper, job_id: str) -> tuple[JobLease, RecordingRepl]:
    """What execute_job does: take the lease, hand it to the keeper, attach the job's REPLs."""
    holder = f"test-worker:{job_id}"
    assert store.acquire_lease(job_id, holder, TTL_S)
    lease = keeper.register(job_id, holder)
    control = JobControl(meter=UsageMeter(), deadline=time.monotonic() + 60)
    repl = RecordingRepl()
    control.repls.add(repl)
    lease.attach(control)
    return lease, repl


def command_calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def keeper_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == KEEPER_THREAD_NAME)


def test_one_thread_keeps_many_leases_in_a_few_round_trips(
    store: Store, keeper: LeaseKeeper, redis_client: redis.Redis
) -> None:
    leases = [start_job(store, keeper, f"job{i}")[0] for i in range(200)]
    assert keeper_threads() == 1 and keeper.jobs == 200
    redis_client.config_resetstat()
    started = time.monotonic()
    # Ten renewals take at least 2 s, twice the TTL: only renewed leases are still there.
    wait_for(lambda: command_calls(redis_client, "evalsha") >= 10, 30, "ten renewals")
    elapsed = time.monotonic() - started
    pipe = redis_client.pipeline(transaction=False)
    for lease in leases:
        pipe.get(keys.job_lease(lease.job_id))
    assert pipe.execute() == [lease.holder for lease in leases]
    assert not any(lease.lost or lease.cancelled() for lease in leases)
    # One MGET per poll and one script per renewal for all 200 jobs (a thread per job
    # polling and renewing on its own would have sent about 200 times as many).
    assert command_calls(redis_client, "mget") <= elapsed / 0.25 + 2
    assert command_calls(redis_client, "evalsha") <= elapsed / RENEW_S + 2


def test_cancelling_one_job_stops_only_that_job(store: Store, keeper: LeaseKeeper) -> None:
    jobs = [start_job(store, keeper, f"job{i}") for i in range(5)]
    victim, victim_repl = jobs[2]
    store.request_cancel(victim.job_id, "enough")
    wait_for(victim_repl.closed.is_set, 10, "the cancelled job's sandbox to be interrupted")
    assert victim.cancelled() == "enough" and not victim.lost
    others = [job for job in jobs if job[0] is not victim]
    assert [lease.cancelled() for lease, _ in others] == [None] * 4
    assert not any(repl.closed.is_set() for _, repl in others)
    # A cancelled job still holds its lease until it has written its result.
    assert store.lease_holder(victim.job_id) == victim.holder


def test_a_cancel_before_the_sandboxes_exist_still_reaches_them(
    store: Store, keeper: LeaseKeeper
) -> None:
    holder = "test-worker:early"
    assert store.acquire_lease("early", holder, TTL_S)
    lease = keeper.register("early", holder)
    store.request_cancel("early")
    wait_for(lease.cancelled, 10, "the keeper to see the cancel")
    control = JobControl(meter=UsageMeter(), deadline=time.monotonic() + 60)
    lease.attach(control)
    repl = RecordingRepl()
    control.repls.add(repl)  # a REPL opened after the cancel is closed at once
    assert repl.closed.is_set()


def test_a_job_whose_lease_another_worker_took_is_stopped_and_not_renewed(
    store: Store, keeper: LeaseKeeper, redis_client: redis.Redis
) -> None:
    (lost, lost_repl), (kept, kept_repl) = (start_job(store, keeper, j) for j in ("a", "b"))
    redis_client.set(keys.job_lease("a"), "another-worker", px=60_000)
    wait_for(lambda: lost.lost, 10, "the keeper to notice the lost lease")
    # It gives way without ending the job: the other worker's run carries it on
    assert (lost.handover() or "").startswith("lease lost") and lost.cancelled() is None
    assert lost_repl.closed.is_set()
    keeper.unregister(lost)  # must not release what is now another worker's lease
    assert store.lease_holder("a") == "another-worker"
    assert not kept.lost and kept.cancelled() is None and not kept_repl.closed.is_set()
    assert store.lease_holder("b") == kept.holder


def test_a_warm_shutdown_stops_every_job_for_a_hand_over(store: Store, keeper: LeaseKeeper) -> None:
    jobs = [start_job(store, keeper, j) for j in ("h1", "h2")]
    assert keeper.hand_over_all("its worker is shutting down") == 2
    for lease, repl in jobs:
        assert lease.handover() == "its worker is shutting down"
        assert lease.cancelled() is None and not lease.lost
        assert repl.closed.is_set()
        # The lease is still held: the run hands the job back itself (Store.hand_back)
        assert store.lease_holder(lease.job_id) == lease.holder


def test_a_finished_job_releases_its_lease_for_good(
    store: Store, keeper: LeaseKeeper, redis_client: redis.Redis
) -> None:
    done, _ = start_job(store, keeper, "done")
    running, _ = start_job(store, keeper, "running")
    keeper.unregister(done)
    assert store.lease_holder("done") is None
    assert keeper.jobs == 1
    redis_client.config_resetstat()
    wait_for(lambda: command_calls(redis_client, "evalsha") >= 3, 10, "three more renewals")
    # Renewal takes a lapsed lease back, so a released one must never be renewed again.
    assert store.lease_holder("done") is None
    assert store.lease_holder("running") == running.holder
    keeper.close()
    assert keeper_threads() == 0
    with pytest.raises(RuntimeError, match="closed"):
        keeper.register("late", "test-worker:late")


# ---- in a real orchestrator worker ---------------------------------------------------------


@pytest.fixture
def cluster(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[Cluster]:
    with ScriptedProvider() as provider:
        c = Cluster(redis_server, provider, tmp_path)
        yield c
        c.stop()


def test_one_cancelled_job_among_several_in_one_worker(cluster: Cluster) -> None:
    cluster.provider.configure(root_latency_s=0.3)
    cluster.start(ORCHESTRATE_QUEUE, concurrency=6)
    cluster.start("rlm.llm")
    handles = [
        cluster.submitter.submit(
            "keep going", f"context {i}", model="scripted/stall", limits=Limits(max_iterations=6)
        )
        for i in range(5)
    ]
    wait_for(
        lambda: all(h.progress().get("iteration", 0) >= 1 for h in handles), 60, "all jobs to run"
    )
    victim = handles[1]
    victim.cancel()
    assert victim.wait(timeout_s=30).status is JobStatus.CANCELLED
    others = [h.wait(timeout_s=90) for h in handles if h is not victim]
    assert [r.status for r in others] == [JobStatus.MAX_ITERATIONS] * 4
    # Every lease was renewed on time (lease_ttl_s 3 s, jobs of ~4 s): nothing restarted.
    assert [r.attempts for r in others] == [1] * 4
    assert not cluster.client.keys("rlm:job:*:lease")  # released as each job ended
