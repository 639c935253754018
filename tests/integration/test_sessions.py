"""Sessions in the service: questions asked one after another over one REPL, through real
``celery -A workers worker`` processes, real sandboxes and the scripted provider, with the
orchestrator killed between questions so the next one rebuilds the REPL from the journals.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rlm_jobs import keys
from rlm_jobs.config import Settings
from rlm_jobs.errors import SessionError
from rlm_jobs.models import JobResult, JobStatus
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.sessions.store import SessionStore
from rlm_jobs.store import Store
from rlm_jobs.submitter import JobHandle, Submitter
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import Cluster, wait_for, wait_sandboxes_gone
from tests.support.tools import QUESTIONS, TABLES
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


def root_calls(cluster: Cluster) -> int:
    return sum(1 for r in cluster.provider.requests() if r.role == "root" and r.outcome == "ok")


def ask(cluster: Cluster, session_id: str, n: int) -> JobHandle:
    return cluster.submitter.submit(
        QUESTIONS[n], TABLES[n], model="scripted/session", session_id=session_id
    )


def answer(handle: JobHandle) -> Any:
    row = handle.wait(timeout_s=90).row()
    assert row["status"] == "COMPLETED", row
    return row["answer"]


def metadata(handle: JobHandle) -> dict[str, Any]:
    return next(e for e in handle.trajectory() if e.get("type") == "metadata")


def test_a_session_of_three_questions_survives_its_orchestrator(cluster: Cluster) -> None:
    orchestrator = cluster.start(ORCHESTRATE_QUEUE)
    cluster.start(LLM_QUEUE)
    session = cluster.submitter.open_session()
    # Two questions on the first orchestrator
    assert answer(ask(cluster, session.id, 0)) == "17"
    assert answer(ask(cluster, session.id, 1)) == "11"
    before = root_calls(cluster)
    # When that orchestrator dies and another takes the third question
    orchestrator.kill()
    cluster.start(ORCHESTRATE_QUEUE)
    third = ask(cluster, session.id, 2)
    # A session answers one question at a time
    with pytest.raises(SessionError, match=f"busy with job {third.id}"):
        ask(cluster, session.id, 2)
    # Then the third question used a variable of the first (table_1, rebuilt by replaying
    # the first two jobs from their journals) and the earlier questions cost nothing again
    assert answer(third) == "apples, plums"
    assert root_calls(cluster) == before + 2  # the third's own two turns, nothing replayed
    meta = metadata(third)
    assert (meta["session_id"], meta["session_index"], meta["session_replayed"]) == (
        session.id,
        2,
        2,
    )
    assert "session_rebuilt" not in meta  # every earlier job replayed to its end
    info = session.info()
    assert info["jobs"] == [h.id for h in session.jobs()] and len(info["jobs"]) == 3
    assert info["jobs"][-1] == third.id and info["busy"] is None
    assert 0 < info["expires_in_s"] <= cluster.settings.session_idle_ttl_s


def test_a_session_job_resumed_after_its_orchestrator_died_mid_question(
    cluster: Cluster,
) -> None:
    # Given a session whose second question is under way when its orchestrator dies
    cluster.provider.configure(root_latency_s=1.0)
    orchestrator = cluster.start(ORCHESTRATE_QUEUE)
    cluster.start(LLM_QUEUE)
    session = cluster.submitter.open_session("resumed-1")
    assert answer(ask(cluster, session.id, 0)) == "17"
    third = ask(cluster, session.id, 2)  # "since the first question", asked second
    wait_for(lambda: int(third.progress().get("iteration", 0)) >= 2, 30, "its second turn")
    orchestrator.kill()
    cluster.start(ORCHESTRATE_QUEUE)
    # Then another orchestrator replays the first job, then the second's own journal
    assert answer(third) == "apples, plums"
    assert third.record().attempts == 2
    assert root_calls(cluster) == 2 + 2  # each question's two turns, none asked twice


def test_ending_a_session_cancels_its_unfinished_job_and_refuses_more(
    cluster: Cluster,
) -> None:
    # No workers: the job stays queued
    session = cluster.submitter.open_session()
    queued = ask(cluster, session.id, 0)
    said = session.end("the user is done")
    assert said == f"session {session.id}: ended; its unfinished job {queued.id} was cancelled"
    assert queued.status() is JobStatus.CANCELLED
    info = session.info()
    assert (info["status"], info["reason"]) == ("ended", "the user is done")
    with pytest.raises(SessionError, match="has ended \\(the user is done\\)"):
        ask(cluster, session.id, 1)
    with pytest.raises(SessionError, match="has ended"):
        session.end()


def test_a_session_job_cancelled_while_queued_frees_its_session_at_once(
    cluster: Cluster,
) -> None:
    # Given a session question cancelled before any orchestrator took it (it ends at once)
    session = cluster.submitter.open_session()
    queued = ask(cluster, session.id, 0)
    queued.cancel()
    assert queued.status() is JobStatus.CANCELLED
    # Then the session is free and idle at once, not held for the job's time limit
    assert session.info()["busy"] is None
    assert 0 < session.info()["expires_in_s"] <= cluster.settings.session_idle_ttl_s
    # And it takes the next question
    following = ask(cluster, session.id, 1)
    assert session.info()["busy"] == following.id
    # ... which the cancelled job's message, taken later and skipped, does not free
    orchestrator = cluster.start(ORCHESTRATE_QUEUE)
    wait_for(
        lambda: f"skipped: job {queued.id} already finished" in orchestrator.log(),
        30,
        "the orchestrator to skip the cancelled job",
    )
    assert session.info()["busy"] == following.id


def test_an_idle_session_ends_after_its_ttl_but_not_while_a_job_holds_it(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    settings = Settings(redis_url=redis_server.url, session_idle_ttl_s=1)
    submitter = Submitter(redis_client, lambda job_id: None, settings)
    sessions = SessionStore(redis_client, idle_ttl_s=1)
    # A session with a job running is held for the job's time limit, not the idle TTL
    held = submitter.open_session("held")
    sessions.reserve(held.id, "job-a", hold_s=600)
    assert redis_client.ttl(keys.session(held.id)) > 600
    # Its job finished: from now on the idle TTL runs
    sessions.release(held.id, "job-a")
    assert redis_client.ttl(keys.session(held.id)) <= 1
    # An idle session is gone after its TTL, and a question for it is refused clearly
    idle = submitter.open_session("idle")
    started = time.monotonic()
    wait_for(lambda: not redis_client.exists(keys.session(idle.id)), 10, "the session to expire")
    assert time.monotonic() - started < 5
    with pytest.raises(SessionError, match="idle longer than its 1 s"):
        submitter.submit("q", "c", model="scripted/session", session_id=idle.id)
    with pytest.raises(SessionError, match="no session 'idle'"):
        submitter.session(idle.id)


def test_a_session_takes_its_next_question_in_the_step_its_job_ends(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    # Given a session whose job is running (held for the job's time limit)
    settings = Settings(redis_url=redis_server.url, session_idle_ttl_s=30)
    submitter = Submitter(redis_client, lambda job_id: None, settings)
    session = submitter.open_session()
    job = submitter.submit("q", "c", model="scripted/session", session_id=session.id)
    assert session.info()["busy"] == job.id
    assert session.info()["expires_in_s"] > 30
    # When the job's result is stored the way workers store it (workers/runtime.py)
    sessions = SessionStore(redis_client, idle_ttl_s=30)
    result = JobResult(job_id=job.id, status=JobStatus.COMPLETED, reason="", answer="42")
    finished = Store(redis_client).finish(
        result, also=lambda pipe: sessions.release(session.id, job.id, pipe=pipe)
    )
    # Then whoever sees the job ended sees the session free, on its idle TTL
    assert finished and job.status() is JobStatus.COMPLETED
    info = session.info()
    assert info["busy"] is None and 0 < info["expires_in_s"] <= 30
    # And a duplicate run's result changes neither
    again = Store(redis_client).finish(
        result.model_copy(update={"answer": "other"}),
        also=lambda pipe: sessions.release(session.id, job.id, pipe=pipe),
    )
    assert not again and job.result()["answer"] == "42"


def test_session_ids_and_duplicates_are_checked(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    settings = Settings(redis_url=redis_server.url)
    submitter = Submitter(redis_client, lambda job_id: None, settings)
    submitter.open_session("taken")
    with pytest.raises(SessionError, match="exists already"):
        submitter.open_session("taken")
    with pytest.raises(Exception, match="invalid session id"):
        submitter.open_session("no spaces here")
    with pytest.raises(SessionError, match="no session 'never'"):
        submitter.submit("q", "c", model="scripted/session", session_id="never")
