"""Job and batch records in Redis: the service's single source of truth.

A job record is a HASH (``keys.job``) so fields change atomically without read-modify-write:

    spec            JobSpec JSON (immutable after submission)
    status          JobStatus value
    reason          why it ended (or "")
    result          JobResult JSON, written once by ``finish``
    attempts        executions started (HINCRBY); capped by the orchestrator
    created_at / started_at / finished_at   Unix seconds
    batch_id, doc_id, parent_id             links (empty when absent)
    tokens, cost_usd                        live usage, for batch totals and watchers

Every record expires ``keys.RESULT_TTL_S`` after it finishes. ``finish`` is idempotent: a
second execution of the same job can never write a second result.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cached_property
from typing import Any

import redis
from pydantic import ValidationError
from redis.typing import EncodableT, FieldT

from rlm_jobs import keys
from rlm_jobs.calls import renew_keys
from rlm_jobs.errors import StorageError
from rlm_jobs.models import JobResult, JobSpec, JobStatus, Usage
from rlm_jobs.scripts import source

# Commands queued on a job's finishing transaction (``Store.finish``).
AlsoStep = Callable[["redis.client.Pipeline"], object]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class JobRecord:
    """A read-only view of a job hash."""

    def __init__(self, job_id: str, fields: dict[str, str]) -> None:
        self.job_id = job_id
        self.fields = fields

    @property
    def status(self) -> JobStatus:
        return JobStatus(self.fields["status"])

    @cached_property
    def spec(self) -> JobSpec:
        """Parsed once per record (a worker reads it several times per job)."""
        return JobSpec.model_validate_json(self.fields["spec"])

    @property
    def session_id(self) -> str | None:
        """The session the job belongs to, if any (None too when its spec cannot be read)."""
        try:
            spec = self.spec
        except ValidationError:
            return None
        return spec.session.id if spec.session is not None else None

    @property
    def result(self) -> JobResult | None:
        raw = self.fields.get("result")
        return JobResult.model_validate_json(raw) if raw else None

    @property
    def attempts(self) -> int:
        return int(self.fields.get("attempts", 0))

    @property
    def doc_id(self) -> str:
        return self.fields.get("doc_id", "")

    def row(self) -> dict[str, Any]:
        """The result row users get from ``results``, ``run -o`` and ``submit --wait``."""
        result = self.result
        usage = result.usage if result else Usage()
        return {
            "id": self.doc_id or self.job_id,
            "job_id": self.job_id,
            "batch_id": self.fields.get("batch_id") or None,
            "status": self.status.value,
            "answer": result.answer if result else None,
            "structured": result.structured if result else None,
            "reason": self.fields.get("reason", ""),
            "usage": usage.summary(),
            "iterations": result.iterations if result else 0,
            "execution_time_s": result.execution_time_s if result else None,
            "attempts": self.attempts,
        }


class Store:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._finish = client.register_script(source("job_finish"))
        self._start = client.register_script(source("job_start"))
        self._hand_back = client.register_script(source("job_hand_back"))
        self._leases = client.register_script(source("renew"))
        self._release = client.register_script(source("lease_release"))

    # ---- jobs -----------------------------------------------------------------------

    def create_job(self, job_id: str, spec: JobSpec) -> bool:
        """Record a new job; False if the id is already taken (submission is idempotent)."""
        fields: dict[FieldT, EncodableT] = {
            "reason": "",
            "attempts": 0,
            "created_at": time.time(),
            "batch_id": spec.batch_id or "",
            "doc_id": spec.doc_id or "",
            "parent_id": spec.parent_id or "",
            "tokens": 0,
            "cost_usd": 0.0,
        }
        key = keys.job(job_id)
        # HSETNX on the spec field claims the id; the rest follows in the same transaction.
        pipe = self.r.pipeline()
        pipe.hsetnx(key, "spec", spec.model_dump_json())
        pipe.hsetnx(key, "status", JobStatus.QUEUED.value)
        created, _ = pipe.execute()
        if not created:
            return False
        self.r.hset(key, mapping=fields)
        if spec.parent_id:
            self.r.sadd(keys.job_children(spec.parent_id), job_id)
        return True

    def get(self, job_id: str) -> JobRecord:
        raw = self.r.hgetall(keys.job(job_id))
        if not raw:
            raise StorageError(f"no job {job_id!r} (unknown id, or its record has expired)")
        return JobRecord(job_id, {_s(k): _s(v) for k, v in raw.items()})

    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord]:
        ids = list(job_ids)
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        return [
            JobRecord(job_id, {_s(k): _s(v) for k, v in raw.items()})
            for job_id, raw in zip(ids, pipe.execute(), strict=True)
            if raw
        ]

    def mark_running(self, job_id: str, worker: str, *, leased: bool = True) -> int | None:
        """Count an attempt and mark the job running; None if it already has a result.

        Leased jobs (roots) are tracked for the reaper; a child RLM runs inside its root's
        execution and lives or dies with it, so it is not (``leased=False``).
        """
        attempts = self._start(
            keys=[keys.job(job_id), keys.running_jobs()],
            args=[time.time(), worker, job_id, "1" if leased else "0"],
        )
        return None if int(attempts) < 0 else int(attempts)

    def hand_back(self, job_id: str, holder: str) -> bool:
        """Queue a job again after a run stopped it unfinished (a warm shutdown); its
        journal stays for the next run. False if it finished or another holder has it."""
        done = self._hand_back(
            keys=[keys.job(job_id), keys.job_lease(job_id), keys.running_jobs()],
            args=[holder, job_id],
        )
        return bool(done)

    def finish(self, result: JobResult, *, also: AlsoStep | None = None) -> bool:
        """Store the job's one result; False when it already had one (a duplicate run).

        ``also`` queues more commands that must happen with it, in one transaction (a
        session taking its next question): nobody sees the job ended and not them.
        """
        finish_keys = [keys.job(result.job_id), keys.job_lease(result.job_id), keys.running_jobs()]
        args = [
            result.status.value,
            result.reason,
            result.model_dump_json(),
            time.time(),
            result.usage.total_tokens,
            result.usage.cost_usd,
            keys.RESULT_TTL_S,
            result.job_id,
        ]
        if also is None:
            done = self._finish(keys=finish_keys, args=args)
        else:
            done = self._finish_with(finish_keys, args, also)
        if done == -1:
            raise StorageError(f"cannot finish job {result.job_id!r}: it has no record")
        if done == 1:
            pipe = self.r.pipeline(transaction=False)
            for key in (
                keys.job_children(result.job_id),
                keys.job_trajectory(result.job_id),
                keys.job_progress(result.job_id),
                keys.job_cancel(result.job_id),
                keys.job_journal(result.job_id),
                keys.job_calls(result.job_id),
            ):
                pipe.expire(key, keys.RESULT_TTL_S)
            pipe.execute()
        return bool(done == 1)

    def _finish_with(self, finish_keys: list[str], args: list[Any], also: AlsoStep) -> Any:
        # The pipeline loads its scripts once, before the client's retries: a Redis that
        # restarted meanwhile has forgotten them and answers NOSCRIPT (the transaction's
        # commands are scripts: none ran). Built again, the pipeline loads them again.
        for attempt in (1, 2):
            pipe = self.r.pipeline(transaction=True)
            self._finish(keys=finish_keys, args=args, client=pipe)
            also(pipe)
            try:
                return pipe.execute()[0]
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def children(self, job_id: str) -> list[str]:
        return sorted(_s(c) for c in self.r.smembers(keys.job_children(job_id)))

    # ---- leases: who runs a job right now ----------------------------------------------

    def acquire_lease(self, job_id: str, holder: str, ttl_s: float) -> bool:
        """Take the lease, or renew it if ``holder`` has it; False if someone else has it."""
        return not self.renew_leases({job_id: holder}, ttl_s)

    def renew_leases(self, holders: Mapping[str, str], ttl_s: float) -> list[str]:
        """Renew many leases (job id -> holder) in one round trip; a lapsed one is taken again.

        Returns the jobs whose lease another holder has: their runs must stop.
        """
        by_key = {keys.job_lease(job_id): job_id for job_id in holders}
        taken = renew_keys(self._leases, {k: holders[j] for k, j in by_key.items()}, ttl_s)
        return [by_key[k] for k in taken]

    def release_lease(self, job_id: str, holder: str) -> None:
        self._release(keys=[keys.job_lease(job_id)], args=[holder])

    def lease_holder(self, job_id: str) -> str | None:
        holder = self.r.get(keys.job_lease(job_id))
        return None if holder is None else _s(holder)

    def running_without_lease(self) -> list[str]:
        """Jobs marked running whose lease expired: their worker died."""
        ids = [_s(j) for j in self.r.zrange(keys.running_jobs(), 0, -1)]
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(keys.job_lease(job_id))
        return [j for j, held in zip(ids, pipe.execute(), strict=True) if not held]

    def requeue_claim(self, job_id: str, attempt: int) -> bool:
        """Exactly one live worker wins the right to requeue a dead attempt."""
        return bool(self.r.set(keys.job_requeue_claim(job_id, attempt), "1", nx=True, ex=3600))

    # ---- cancellation -------------------------------------------------------------------

    def request_cancel(self, job_id: str, reason: str = "cancelled by user") -> None:
        self.r.set(keys.job_cancel(job_id), reason, ex=keys.RESULT_TTL_S)

    def cancel_reason(self, job_id: str) -> str | None:
        raw = self.r.get(keys.job_cancel(keys.root_job_id(job_id)))
        return None if raw is None else _s(raw)

    def cancel_reasons(self, job_ids: Iterable[str]) -> dict[str, str]:
        """The cancelled ones among ``job_ids`` (one MGET), with their reasons."""
        ids = list(job_ids)
        if not ids:
            return {}
        raw = self.r.mget([keys.job_cancel(keys.root_job_id(job_id)) for job_id in ids])
        return {job_id: _s(r) for job_id, r in zip(ids, raw, strict=True) if r is not None}

    # ---- progress and trajectory ---------------------------------------------------------

    def set_progress(self, job_id: str, counters: dict[str, Any]) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(
            keys.job_progress(job_id), mapping={k: json.dumps(v) for k, v in counters.items()}
        )
        pipe.hset(
            keys.job(job_id),
            mapping={
                "tokens": counters.get("tokens", 0),
                "cost_usd": counters.get("cost_usd", 0.0),
            },
        )
        pipe.execute()

    def progress(self, job_id: str) -> dict[str, Any]:
        raw = self.r.hgetall(keys.job_progress(job_id))
        return {_s(k): json.loads(v) for k, v in raw.items()}

    def append_trajectory(self, job_id: str, entry: dict[str, Any]) -> None:
        self.r.rpush(keys.job_trajectory(job_id), json.dumps(entry, ensure_ascii=False))

    def trajectory(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.r.lrange(keys.job_trajectory(job_id), 0, -1)]

    def reset_trajectory(self, job_id: str) -> None:
        """A resumed run writes its trajectory afresh (its replayed turns included)."""
        self.r.delete(keys.job_trajectory(job_id))

    # ---- batches ----------------------------------------------------------------------------

    def create_batch(self, batch_id: str, meta: dict[str, Any]) -> None:
        self.r.set(keys.batch(batch_id), json.dumps(meta), nx=True)

    def batch_meta(self, batch_id: str) -> dict[str, Any]:
        raw = self.r.get(keys.batch(batch_id))
        if raw is None:
            raise StorageError(f"no batch {batch_id!r} (unknown id, or its record has expired)")
        meta: dict[str, Any] = json.loads(raw)
        return meta

    def batch_job_ids(self, batch_id: str) -> dict[str, str]:
        """Document id -> job id."""
        return {_s(k): _s(v) for k, v in self.r.hgetall(keys.batch_jobs(batch_id)).items()}

    def set_batch_job(self, batch_id: str, doc_id: str, job_id: str) -> None:
        self.r.hset(keys.batch_jobs(batch_id), doc_id, job_id)

    def batch_records(self, batch_id: str) -> Iterator[JobRecord]:
        ids = self.batch_job_ids(batch_id)
        yield from self.get_many(ids.values())
