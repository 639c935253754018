"""Job records against a real Redis: once-only results, leases, idempotent batches."""

from __future__ import annotations

import redis

from rlm_jobs import keys
from rlm_jobs.config import Settings
from rlm_jobs.contexts import get_context, put_context
from rlm_jobs.models import JobResult, JobSpec, JobStatus, Usage
from rlm_jobs.store import Store
from rlm_jobs.submitter import Document, Submitter


def _spec(client: redis.Redis) -> JobSpec:
    return JobSpec(query="q", context=put_context(client, "ctx"), model="scripted/generic")


def test_contexts_are_stored_once_by_content(redis_client: redis.Redis) -> None:
    a = put_context(redis_client, ["x", "y"])
    b = put_context(redis_client, ["x", "y"])
    assert a == b and a.kind == "list" and a.length == 2 and a.total_chars == 2
    assert get_context(redis_client, a) == ["x", "y"]
    assert len(redis_client.keys("rlm:ctx:*")) == 1


def test_a_job_gets_exactly_one_result(redis_client: redis.Redis) -> None:
    store = Store(redis_client)
    assert store.create_job("j1", _spec(redis_client))
    assert not store.create_job("j1", _spec(redis_client))
    assert store.mark_running("j1", "w1") == 1
    usage = Usage()
    usage.add("scripted/generic", 10, 5, 0.001)
    first = JobResult(job_id="j1", status=JobStatus.COMPLETED, answer="a", usage=usage)
    second = JobResult(job_id="j1", status=JobStatus.FAILED, answer="b")
    assert store.finish(first)
    assert not store.finish(second)
    record = store.get("j1")
    assert record.status is JobStatus.COMPLETED and record.result == first
    assert store.mark_running("j1", "w2") is None  # a late duplicate does not restart it
    assert record.row()["usage"]["total_tokens"] == 15


def test_leases_exclude_other_holders_until_released(redis_client: redis.Redis) -> None:
    store = Store(redis_client)
    store.create_job("j2", _spec(redis_client))
    assert store.acquire_lease("j2", "a", 5)
    assert not store.acquire_lease("j2", "b", 5)
    assert store.acquire_lease("j2", "a", 5)  # renewal by the holder
    store.mark_running("j2", "a")
    assert store.running_without_lease() == []
    store.release_lease("j2", "b")  # not the holder: no effect
    assert store.lease_holder("j2") == "a"
    store.release_lease("j2", "a")
    assert store.running_without_lease() == ["j2"]
    assert store.requeue_claim("j2", 1)
    assert not store.requeue_claim("j2", 1)


def test_many_leases_are_renewed_in_one_call_and_foreign_ones_reported(
    redis_client: redis.Redis,
) -> None:
    store = Store(redis_client)
    assert store.acquire_lease("mine", "a", 1)
    assert store.acquire_lease("theirs", "b", 60)
    # "lapsed" has no lease (expired): renewing takes it again, as a single renewal does.
    taken = store.renew_leases({"mine": "a", "theirs": "a", "lapsed": "a"}, 60)
    assert taken == ["theirs"]
    assert store.lease_holder("theirs") == "b"  # someone else's lease is left alone
    assert store.lease_holder("mine") == "a" and store.lease_holder("lapsed") == "a"
    assert redis_client.pttl(keys.job_lease("mine")) > 50_000  # the TTL was extended
    assert store.renew_leases({}, 60) == []


def test_cancel_flags_of_many_jobs_are_read_at_once(redis_client: redis.Redis) -> None:
    store = Store(redis_client)
    store.request_cancel("j1", "stop it")
    reasons = store.cancel_reasons(["j1", "j2", "j1.3"])
    # A child RLM is cancelled with its root.
    assert reasons == {"j1": "stop it", "j1.3": "stop it"}
    assert store.cancel_reasons([]) == {}


def test_batch_resubmission_skips_finished_documents(redis_client: redis.Redis) -> None:
    enqueued: list[str] = []
    submitter = Submitter(redis_client, enqueued.append, Settings(redis_url="redis://unused"))
    docs = [Document(id=f"d{i}", context=f"text {i}") for i in range(3)]
    batch, started = submitter.submit_batch(docs, "what?", batch_id="b1")
    assert started == 3 and len(enqueued) == 3
    ids = submitter.store.batch_job_ids("b1")
    submitter.store.finish(JobResult(job_id=ids["d0"], status=JobStatus.COMPLETED, answer="x"))
    submitter.store.finish(JobResult(job_id=ids["d1"], status=JobStatus.FAILED, reason="boom"))
    # d2 is still queued: left alone; d1 failed: retried; d0 done: skipped.
    _, started_again = submitter.submit_batch(docs, "what?", batch_id="b1")
    assert started_again == 1
    assert submitter.store.batch_job_ids("b1")["d1"] != ids["d1"]
    progress = batch.progress()
    assert progress["total"] == 3 and progress["completed"] == 1 and progress["queued"] == 2


def test_cancelling_a_queued_job_ends_it_at_once(redis_client: redis.Redis) -> None:
    submitter = Submitter(redis_client, lambda _: None, Settings(redis_url="redis://unused"))
    handle = submitter.submit("q", "ctx")
    handle.cancel()
    record = handle.wait(timeout_s=5)
    assert record.status is JobStatus.CANCELLED
    assert submitter.store.cancel_reason(handle.id) == "cancelled by user"
