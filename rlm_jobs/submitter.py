"""Submitting jobs and batches, and following them: the service's Python API.

The submitter stores contexts and job records in Redis and asks an ``Enqueue`` callable to
start the job; ``workers.enqueue.celery_enqueuer`` is the Celery one. This module never
imports Celery.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from rlm_jobs.clients import check_model
from rlm_jobs.config import Settings
from rlm_jobs.contexts import ContextValue, put_context
from rlm_jobs.errors import DocumentError, SpecError, StorageError
from rlm_jobs.models import (
    MAX_DESCRIPTION_CHARS,
    ContextRef,
    JobResult,
    JobSpec,
    JobStatus,
    Limits,
    SessionId,
    SessionPlace,
    validation_problems,
)
from rlm_jobs.providers.budget import BatchBudgets
from rlm_jobs.schema import check_schema
from rlm_jobs.sessions.store import SessionStore
from rlm_jobs.store import JobRecord, Store

# Sends the orchestrate task for a job id that is already recorded.
Enqueue = Callable[[str], None]

# Statuses a resubmitted batch leaves alone: done, or still on its way.
_KEEP_ON_RESUBMIT = (JobStatus.COMPLETED, JobStatus.QUEUED, JobStatus.RUNNING)


# Why a document could not be read: a sentence, not a traceback.
_MAX_ERROR_CHARS = 2_000
UNREADABLE = "unreadable document"


class Document(BaseModel):
    """One document: its id, its content (or why it could not be read), optionally its own
    query, and what the model should be told about its shape."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=500)
    context: str | list[Any] | dict[str, Any] | None = None
    query: str | None = Field(default=None, min_length=1, max_length=100_000)
    # "It is report.pdf (PDF, 3 pages); each page begins with ..." (see rlm_jobs.ingest).
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    # Set instead of a context when the file could not be read; a batch records the
    # document as FAILED with this reason and runs the others.
    error: str | None = Field(default=None, min_length=1, max_length=_MAX_ERROR_CHARS)
    # A corpus: the files left out of it, name -> why.
    skipped: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _content_or_error(self) -> Document:
        if (self.context is None) == (self.error is None):
            raise ValueError("a document has a context, or an error saying why it has none")
        return self


def _check_schema(schema: dict[str, Any]) -> None:
    try:
        check_schema(schema)
    except ValueError as exc:
        raise SpecError(f"invalid answer schema: {exc}") from None


def _spec(**fields: Any) -> JobSpec:
    try:
        return JobSpec(**fields)
    except ValidationError as exc:
        raise SpecError(f"invalid job: {validation_problems(exc, 'spec')}") from exc


class JobHandle:
    def __init__(self, store: Store, job_id: str, sessions: SessionStore | None = None) -> None:
        self._store = store
        # Where a job of a session, cancelled while queued, gives its session back.
        self._sessions = sessions
        self.id = job_id

    def record(self) -> JobRecord:
        return self._store.get(self.id)

    def status(self) -> JobStatus:
        return self.record().status

    def progress(self) -> dict[str, Any]:
        return self._store.progress(self.id)

    def wait(self, timeout_s: float | None = None, poll_s: float = 0.2) -> JobRecord:
        """Block until the job has finished; raises TimeoutError past ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            record = self.record()
            if record.status.finished and record.result is not None:
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {record.status.value} after {timeout_s} s")
            time.sleep(poll_s)

    def result(self) -> dict[str, Any]:
        return self.record().row()

    def trajectory(self) -> list[dict[str, Any]]:
        return self._store.trajectory(self.id)

    def cancel(self, reason: str = "cancelled by user") -> None:
        """Ask the job (and its children) to stop; a job still queued ends at once."""
        self._store.request_cancel(self.id, reason)
        record = self.record()
        if record.status is not JobStatus.QUEUED:
            return
        result = JobResult(job_id=self.id, status=JobStatus.CANCELLED, reason=reason)
        session_id, sessions = record.session_id, self._sessions
        if session_id is None or sessions is None:
            self._store.finish(result)
            return
        # Its session takes the next question at once, in the transaction that ends it.
        self._store.finish(
            result, also=lambda pipe: sessions.release(session_id, self.id, pipe=pipe)
        )


class BatchHandle:
    def __init__(self, store: Store, batch_id: str) -> None:
        self._store = store
        self.id = batch_id

    def jobs(self) -> list[JobHandle]:
        return [JobHandle(self._store, j) for j in self._store.batch_job_ids(self.id).values()]

    def progress(self) -> dict[str, Any]:
        """Counts by status plus totals: the numbers behind ``rlm-jobs watch``."""
        records = list(self._store.batch_records(self.id))
        counts = {s.value: 0 for s in JobStatus}
        tokens = 0
        cost = 0.0
        for record in records:
            counts[record.status.value] += 1
            tokens += int(float(record.fields.get("tokens", 0)))
            cost += float(record.fields.get("cost_usd", 0.0))
        finished = sum(n for s, n in counts.items() if JobStatus(s).finished)
        return {
            "batch_id": self.id,
            "total": len(records),
            "finished": finished,
            "completed": counts[JobStatus.COMPLETED.value],
            "failed": finished - counts[JobStatus.COMPLETED.value],
            "running": counts[JobStatus.RUNNING.value],
            "queued": counts[JobStatus.QUEUED.value],
            "by_status": {s: n for s, n in counts.items() if n},
            "tokens": tokens,
            "cost_usd": cost,
        }

    def wait(self, timeout_s: float | None = None, poll_s: float = 0.5) -> dict[str, Any]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            progress = self.progress()
            if progress["finished"] == progress["total"]:
                return progress
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"batch {self.id}: {progress['finished']}/{progress['total']} done"
                )
            time.sleep(poll_s)

    def results(self) -> Iterator[dict[str, Any]]:
        for record in self._store.batch_records(self.id):
            yield record.row()

    def meta(self) -> dict[str, Any]:
        """What the batch was submitted with: query, model, answer schema, creation time."""
        return self._store.batch_meta(self.id)

    def cancel(self, reason: str = "batch cancelled by user") -> int:
        count = 0
        for record in self._store.batch_records(self.id):
            if not record.status.finished:
                self._store.request_cancel(record.job_id, reason)
                count += 1
        return count


_SESSION_ID: TypeAdapter[str] = TypeAdapter(SessionId)


def _session_id(value: str) -> str:
    try:
        return _SESSION_ID.validate_python(value)
    except ValidationError:
        raise SpecError(
            f"invalid session id {value!r}: 1 to 64 letters, digits, '-' or '_'"
        ) from None


class SessionHandle:
    """A session of the service: questions asked one after another over one REPL."""

    def __init__(self, sessions: SessionStore, store: Store, session_id: str) -> None:
        self._sessions = sessions
        self._store = store
        self.id = session_id

    def info(self) -> dict[str, Any]:
        """Status (open or ended), its jobs in order, the busy one, times, expiry."""
        return self._sessions.info(self.id)

    def jobs(self) -> list[JobHandle]:
        return [JobHandle(self._store, j, self._sessions) for j in self.info()["jobs"]]

    def end(self, reason: str = "ended on request") -> str:
        """End the session: no more questions; an unfinished job of it is cancelled."""
        busy = self._sessions.end(self.id, reason)
        if busy is None:
            return f"session {self.id}: ended"
        try:
            JobHandle(self._store, busy, self._sessions).cancel(f"its session ended ({reason})")
        except StorageError:  # never recorded: nothing to cancel
            return f"session {self.id}: ended"
        return f"session {self.id}: ended; its unfinished job {busy} was cancelled"


class Submitter:
    def __init__(self, client: redis.Redis, enqueue: Enqueue, settings: Settings) -> None:
        self.store = Store(client)
        self.sessions = SessionStore(client, idle_ttl_s=settings.session_idle_ttl_s)
        self._client = client
        self._enqueue = enqueue
        self._settings = settings

    def submit(
        self,
        query: str,
        context: ContextValue | Document,
        *,
        model: str | None = None,
        sub_model: str | None = None,
        limits: Limits | None = None,
        job_id: str | None = None,
        batch_id: str | None = None,
        doc_id: str | None = None,
        answer_schema: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> JobHandle:
        """Start one job. ``context`` may be a ``Document`` (``rlm_jobs.load_document``,
        ``load_corpus``): the model is then told what it is. With ``answer_schema`` (a JSON
        Schema) the final answer must match it; the row's ``structured`` holds its value.
        With ``session_id`` (``open_session``) the job continues that session: its REPL
        holds the variables of the session's earlier questions. A session takes one
        question at a time (``SessionError`` while its last job is unfinished)."""
        if isinstance(context, Document):
            if context.context is None:
                raise DocumentError(context.id, context.error or UNREADABLE)
            value, description = context.context, context.description
        else:
            value, description = context, None
        # Validate everything before anything is written, so a bad job leaves no trace.
        model = check_model(model or self._settings.resolved_model())
        sub_model = sub_model or self._settings.sub_model
        if sub_model is not None:
            check_model(sub_model)
        job_id = job_id or uuid.uuid4().hex
        if "." in job_id:
            raise SpecError("a job id may not contain '.' (reserved for child RLM ids)")
        fields: dict[str, Any] = {
            "model": model, "sub_model": sub_model, "limits": limits, "batch_id": batch_id,
            "doc_id": doc_id, "answer_schema": answer_schema,
        }  # fmt: skip
        ref = put_context(self._client, value)
        if session_id is not None:
            return self._submit_in_session(
                _session_id(session_id), job_id, query, ref, description, fields
            )
        spec = self._job_spec(query, ref, description, **fields)
        if self.store.create_job(job_id, spec):
            self._enqueue(job_id)
        return JobHandle(self.store, job_id, self.sessions)

    def _submit_in_session(
        self,
        session_id: str,
        job_id: str,
        query: str,
        ref: ContextRef,
        description: str | None,
        fields: dict[str, Any],
    ) -> JobHandle:
        if fields["batch_id"] is not None:
            raise SpecError("a job of a batch cannot continue a session")
        self._job_spec(query, ref, description, **fields)  # refused before the session moves
        hold_s = (fields["limits"] or Limits()).max_timeout_s
        earlier = self.sessions.reserve(session_id, job_id, hold_s)
        place = SessionPlace(id=session_id, earlier=earlier)
        spec = self._job_spec(query, ref, description, **fields, session=place)
        if not self.store.create_job(job_id, spec):
            self.sessions.release(session_id, job_id, recorded=False)
            raise SpecError(f"job id {job_id!r} is taken; a session's job needs a new one")
        self._enqueue(job_id)
        return JobHandle(self.store, job_id, self.sessions)

    def open_session(self, session_id: str | None = None) -> SessionHandle:
        """Open a session (a new id unless ``session_id`` names one): ``submit(...,
        session_id=...)`` then asks its questions in turn. It ends on ``end()`` or after
        ``session_idle_ttl_s`` without a question."""
        opened = self.sessions.open(None if session_id is None else _session_id(session_id))
        return SessionHandle(self.sessions, self.store, opened)

    def session(self, session_id: str) -> SessionHandle:
        handle = SessionHandle(self.sessions, self.store, _session_id(session_id))
        handle.info()  # fail now, with a clear message, on an unknown or expired id
        return handle

    @staticmethod
    def _job_spec(query: str, ref: ContextRef, description: str | None, **fields: Any) -> JobSpec:
        if description is not None:
            try:
                ref = ContextRef.model_validate({**ref.model_dump(), "description": description})
            except ValidationError as exc:
                raise SpecError(f"invalid context: {validation_problems(exc, 'context')}") from exc
        return _spec(query=query, context=ref, **{**fields, "limits": fields["limits"] or Limits()})

    def _record_unreadable(
        self, doc: Document, query: str, *, batch_id: str, model: str, **fields: Any
    ) -> JobHandle:
        """A job for a document that could not be read: recorded, finished FAILED at once
        with the reason, never run, so results and progress count it like any other."""
        spec = self._job_spec(
            query, put_context(self._client, ""), None, model=model, batch_id=batch_id,
            doc_id=doc.id, **fields,
        )  # fmt: skip
        job_id = uuid.uuid4().hex
        self.store.create_job(job_id, spec)
        self.store.finish(
            JobResult(job_id=job_id, status=JobStatus.FAILED, reason=f"{UNREADABLE}: {doc.error}")
        )
        return JobHandle(self.store, job_id, self.sessions)

    def submit_batch(
        self,
        documents: Iterable[Document],
        query: str | None,
        *,
        batch_id: str | None = None,
        model: str | None = None,
        sub_model: str | None = None,
        limits: Limits | None = None,
        answer_schema: dict[str, Any] | None = None,
        batch_max_cost_usd: float | None = None,
        batch_max_tokens: int | None = None,
    ) -> tuple[BatchHandle, int]:
        """Submit one job per document; returns the batch and how many jobs were started.

        Idempotent per (batch, document): documents whose job completed or is still queued or
        running are skipped; failed, cancelled or limit-stopped ones get a fresh job. A
        document that could not be read (``Document.error``) is recorded as a job finished
        ``FAILED`` with its reason, without running. ``batch_max_cost_usd`` /
        ``batch_max_tokens`` cap what all its jobs may spend together
        (``rlm_jobs.providers.budget``); a resubmission may change them.
        """
        docs = list(documents)
        seen: set[str] = set()
        for doc in docs:
            if doc.id in seen:
                raise SpecError(f"document id {doc.id!r} appears twice in the batch")
            seen.add(doc.id)
            if not (doc.query or query):
                raise SpecError(f"document {doc.id!r} has no query and no batch query was given")
        batch_id = batch_id or uuid.uuid4().hex[:12]
        model = check_model(model or self._settings.resolved_model())
        if sub_model is not None:
            check_model(sub_model)
        if answer_schema is not None:
            _check_schema(answer_schema)  # before the batch exists: a bad one leaves no trace
        # Checked before anything is written; set before any job is enqueued.
        BatchBudgets(self._client).set(
            batch_id, max_cost_usd=batch_max_cost_usd, max_tokens=batch_max_tokens
        )
        self.store.create_batch(
            batch_id,
            {
                "query": query,
                "model": model,
                "created_at": time.time(),
                "answer_schema": answer_schema,
            },
        )
        existing = self.store.batch_job_ids(batch_id)
        records = {r.job_id: r for r in self.store.get_many(existing.values())}
        started = 0
        for doc in docs:
            previous = records.get(existing.get(doc.id, ""))
            if previous is not None and previous.status in _KEEP_ON_RESUBMIT:
                continue
            if doc.error is not None:
                failed = self._record_unreadable(
                    doc, doc.query or query or "", batch_id=batch_id, model=model,
                    sub_model=sub_model, limits=limits, answer_schema=answer_schema,
                )  # fmt: skip
                self.store.set_batch_job(batch_id, doc.id, failed.id)
                continue
            handle = self.submit(
                doc.query or query or "",
                doc,
                model=model,
                sub_model=sub_model,
                limits=limits,
                batch_id=batch_id,
                doc_id=doc.id,
                answer_schema=answer_schema,
            )
            self.store.set_batch_job(batch_id, doc.id, handle.id)
            started += 1
        return BatchHandle(self.store, batch_id), started

    def job(self, job_id: str) -> JobHandle:
        self.store.get(job_id)  # fail now, with a clear message, on an unknown id
        return JobHandle(self.store, job_id, self.sessions)

    def batch(self, batch_id: str) -> BatchHandle:
        self.store.batch_meta(batch_id)
        return BatchHandle(self.store, batch_id)

    def cancel(self, job_or_batch_id: str) -> str:
        """Cancel a job (and its children) or a whole batch; says which it was."""
        try:
            self.store.get(job_or_batch_id)
        except StorageError:
            count = self.batch(job_or_batch_id).cancel()
            return f"batch {job_or_batch_id}: {count} unfinished jobs cancelled"
        self.job(job_or_batch_id).cancel()
        return f"job {job_or_batch_id}: cancel requested"
