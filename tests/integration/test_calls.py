"""A call's record in real Redis: who may keep a background response id in it."""

from __future__ import annotations

import redis

from rlm_jobs import keys
from rlm_jobs.calls import CallStore, RecordHandle, Taken
from rlm_jobs.clients.calls import CallContext
from rlm_jobs.dispatch import user_message


def take(calls: CallStore, token: str) -> Taken:
    _, taken = calls.take("job-r", ["c1"], token, 30)
    call = taken["c1"]
    assert isinstance(call, Taken)
    return call


def test_only_the_claim_holder_keeps_a_response_id_and_a_gone_record_stays_gone(
    redis_client: redis.Redis,
) -> None:
    calls = CallStore(redis_client)
    context = CallContext(job_id="job-r", kind="sub")
    calls.prepare("job-r", "scripted/generic", "w", ["c1"], [[user_message("hi")]], context)
    assert take(calls, "tok-a").response_id is None
    # Only the worker holding the claim writes the id
    assert not calls.keep_response("c1", "tok-b", "resp_b")
    assert calls.keep_response("c1", "tok-a", "resp_a")
    # A worker taking the call over once the claim lapsed gets the id with the call, and
    # the old holder can no longer change it
    redis_client.delete(keys.subcall_claim("c1"))
    assert take(calls, "tok-b").response_id == "resp_a"
    assert not RecordHandle(calls, "c1", "tok-a", "resp_a").keep(None)
    assert redis_client.hget(keys.subcall("c1"), "response") == "resp_a"
    assert RecordHandle(calls, "c1", "tok-b", "resp_a").keep(None)
    assert redis_client.hget(keys.subcall("c1"), "response") is None
    # A call given up (or answered): keeping an id does not bring its record back
    calls.abandon(["c1"])
    assert not calls.keep_response("c1", "tok-b", "resp_c")
    assert not redis_client.exists(keys.subcall("c1"))


def test_a_call_stands_as_ours_theirs_or_gone(redis_client: redis.Redis) -> None:
    calls = CallStore(redis_client)
    context = CallContext(job_id="job-r", kind="sub")
    calls.prepare("job-r", "scripted/generic", "w", ["c1"], [[user_message("hi")]], context)
    take(calls, "tok-a")
    assert calls.keep_response("c1", "tok-a", "resp_a")
    mine = RecordHandle(calls, "c1", "tok-a", "resp_a")
    assert mine.standing() == "ours"
    # A lapsed claim nobody took yet is still ours (the keeper takes it back)
    redis_client.delete(keys.subcall_claim("c1"))
    assert mine.standing() == "ours"
    # Taken over by a worker that fetches this response: theirs (leave it running)
    assert take(calls, "tok-b").response_id == "resp_a"
    assert mine.standing() == "theirs"
    assert RecordHandle(calls, "c1", "tok-b", "resp_a").standing() == "ours"
    # ... until the new owner asks afresh: nobody will fetch resp_a any more
    assert calls.keep_response("c1", "tok-b", "resp_b")
    assert mine.standing() == "gone"
    # Given up by its job (or answered): gone for everyone
    calls.abandon(["c1"])
    assert RecordHandle(calls, "c1", "tok-b", "resp_b").standing() == "gone"
