"""Sessions in Redis: which jobs a session holds, in order, and whether it takes another.

``keys.session`` is the record (open or ended, its busy job, timestamps) and
``keys.session_jobs`` the job ids in the order they were asked. A session takes one job at
a time: a new job is refused while the last one is unfinished (``SessionError`` saying
which). It expires ``session_idle_ttl_s`` after its last job finished (while a job runs it
is held for that job's time limit plus the TTL instead), and ending it keeps an ended
record for a week, so a late question is told the session ended rather than that it
never existed. Each step is one Lua script (``rlm_jobs/scripts/session_*.lua``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis

from rlm_jobs import keys
from rlm_jobs.errors import SessionError
from rlm_jobs.models import MAX_SESSION_JOBS, JobStatus
from rlm_jobs.redis_errors import redis_errors
from rlm_jobs.scripts import source

# A busy job finishing between our look and the script is retried this often.
_RESERVE_TRIES = 5


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SessionStore:
    def __init__(self, client: redis.Redis, *, idle_ttl_s: float) -> None:
        self._client = client
        self.idle_ttl_s = idle_ttl_s
        self._open = client.register_script(source("session_open"))
        self._reserve = client.register_script(source("session_reserve"))
        self._release = client.register_script(source("session_release"))
        self._end = client.register_script(source("session_end"))

    def open(self, session_id: str | None = None) -> str:
        """Open a session (a new id unless one is given) and return its id."""
        session_id = session_id or uuid.uuid4().hex[:16]
        with redis_errors("opening a session"):
            created = self._open(
                keys=[keys.session(session_id)], args=[time.time(), _ttl(self.idle_ttl_s)]
            )
        if not created:
            raise SessionError(f"a session {session_id!r} exists already")
        return session_id

    def reserve(self, session_id: str, job_id: str, hold_s: float) -> list[str]:
        """Make ``job_id`` the session's next job; returns the jobs before it, in order.

        Refused with ``SessionError`` if the session is unknown, expired, ended, full, or
        its last job has not finished.
        """
        for _ in range(_RESERVE_TRIES):
            busy = self._busy_unfinished(session_id)
            with redis_errors("adding a job to a session"):
                reply = self._reserve(
                    keys=[keys.session(session_id), keys.session_jobs(session_id)],
                    args=[
                        busy,
                        job_id,
                        time.time(),
                        _ttl(hold_s + self.idle_ttl_s),
                        MAX_SESSION_JOBS,
                    ],
                )
            outcome, rest = _s(reply[0]), [_s(r) for r in reply[1:]]
            if outcome == "ok":
                return rest
            if outcome != "changed":
                raise SessionError(self._refusal(session_id, outcome, rest))
        raise SessionError(f"session {session_id!r} is changing under us; try again")

    def release(
        self,
        session_id: str,
        job_id: str,
        *,
        recorded: bool = True,
        pipe: redis.client.Pipeline | None = None,
    ) -> bool:
        """The session's job is over (or was never recorded): it takes the next one.

        With ``pipe``, only queued there (the job's finishing transaction, ``Store.finish``)
        and True."""
        with redis_errors("releasing a session's job"):
            done = self._release(
                keys=[keys.session(session_id), keys.session_jobs(session_id)],
                args=[job_id, time.time(), _ttl(self.idle_ttl_s), "0" if recorded else "1"],
                client=pipe,
            )
        return pipe is not None or bool(done)

    def end(self, session_id: str, reason: str = "ended on request") -> str | None:
        """End the session; returns its unfinished job, if any (the caller cancels it)."""
        with redis_errors("ending a session"):
            reply = self._end(
                keys=[keys.session(session_id), keys.session_jobs(session_id)],
                args=[time.time(), reason, keys.RESULT_TTL_S],
            )
        outcome, rest = _s(reply[0]), [_s(r) for r in reply[1:]]
        if outcome != "ok":
            raise SessionError(self._refusal(session_id, outcome, rest))
        return rest[0] or None

    def info(self, session_id: str) -> dict[str, Any]:
        """The session as JSON: status, jobs in order, busy job, times, seconds to expiry."""
        with redis_errors("reading a session"):
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(keys.session(session_id))
            pipe.lrange(keys.session_jobs(session_id), 0, -1)
            pipe.ttl(keys.session(session_id))
            record, jobs, ttl = pipe.execute()
        if not record:
            raise SessionError(self._refusal(session_id, "missing", []))
        fields = {_s(k): _s(v) for k, v in record.items()}
        return {
            "session_id": session_id,
            "status": fields.get("status", ""),
            "jobs": [_s(j) for j in jobs],
            "busy": fields.get("busy") or None,
            "created_at": float(fields.get("created_at", 0)),
            "last_used_at": float(fields.get("last_used_at", 0)),
            "ended_at": float(fields["ended_at"]) if "ended_at" in fields else None,
            "reason": fields.get("reason", ""),
            "expires_in_s": int(ttl) if int(ttl) >= 0 else None,
        }

    def _busy_unfinished(self, session_id: str) -> str:
        """The session's busy job as recorded ('' for none); SessionError if it runs still."""
        with redis_errors("reading a session"):
            busy = self._client.hget(keys.session(session_id), "busy")
            if busy is None:
                return ""
            status = self._client.hget(keys.job(_s(busy)), "status")
        if status is not None and not JobStatus(_s(status)).finished:
            raise SessionError(
                f"session {session_id!r} is busy with job {_s(busy)} ({_s(status)}); a session "
                "answers one question at a time: wait for it (rlm-jobs status ID), then ask"
            )
        return _s(busy)

    def _refusal(self, session_id: str, outcome: str, rest: list[str]) -> str:
        if outcome == "missing":
            return (
                f"no session {session_id!r}: never opened, or idle longer than its "
                f"{self.idle_ttl_s:g} s (session_idle_ttl_s) and gone; open a new one"
            )
        if outcome == "ended":
            why = f" ({rest[0]})" if rest and rest[0] else ""
            return f"session {session_id!r} has ended{why}; open a new one"
        if outcome == "full":
            return f"session {session_id!r} holds {MAX_SESSION_JOBS:,} jobs, the most one may"
        return f"session {session_id!r}: {outcome}"


def _ttl(seconds: float) -> int:
    return max(1, int(seconds + 0.999))
