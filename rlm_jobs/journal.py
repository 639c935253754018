"""A job's journal: what its progress depends on, recorded as it happens, so a job taken over
after its worker died resumes by replay instead of starting again.

What is recorded (``keys.job_journal``, one JSON entry per step, in order): every root
model call, with the hash of its request (model and messages), and every sub-call request
a cell made (``llm_query``, a batch, ``rlm_query``), with the hash of its prompts. Their
answers are stored apart, by call id, in ``keys.job_calls``: the llm worker that answers a
call writes it there itself, so an answer that arrives after the orchestrator died is
still kept (``rlm_jobs.calls``), and a call in flight when it died is not paid again.

A resumed job opens its journal and replays it: ``root()`` and ``request()`` give each step
the same call ids as before when it asks the same thing at the same position, so its
answers come from the stored results (cells run again in a fresh sandbox). The first step
that differs (the code is not deterministic: it depends on time, say) ends the replay: the
entries after it are dropped and the job goes on live from there. Usage is counted once:
a replayed answer adds its stored usage to the meter, a live one what it spent.

Entries carry their position (``seq``): a write repeated by a client retry is dropped on
load, and a lost one ends the replay there.

A journal opened ``replay_only`` (a session's earlier job, run again only to rebuild the
REPL and the conversation: ``rlm_jobs.sessions``) is never written: the first step it does
not hold raises ``ReplayEnded``, and so does every step after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis

from rlm_jobs import keys
from rlm_jobs.calls import CallStore, MemoryResultStore, ResultStore
from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.errors import ReplayEnded

log = logging.getLogger(__name__)

RequestKind = Literal["llm", "rlm", "tool"]


def _digest(*parts: Any) -> str:
    data = json.dumps(parts, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Request:
    """Where a sub-call request sits in the job's journal, and the ids of its prompts."""

    index: int
    call_ids: list[str]
    # True when the journal held this very request: its answers may be stored already.
    replayed: bool


class JournalLog(Protocol):
    """Where a journal's entries are written."""

    def append(self, entry: dict[str, Any]) -> None: ...

    def truncate(self, keep: int) -> None:
        """Drop every entry from position ``keep`` on."""


class Journal:
    """One run of one job over its journal; safe to call from the job's threads."""

    def __init__(
        self,
        job_id: str,
        entries: list[dict[str, Any]],
        log: JournalLog,
        *,
        replay_only: bool = False,
    ) -> None:
        self.job_id = job_id
        self.replay_only = replay_only
        # Why a replay-only run stopped, once it has.
        self.replay_ended: str | None = None
        self._log = log
        self._entries = entries
        self._cursor = 0
        self._requests = 0
        self._lock = threading.Lock()
        self.resumed = bool(entries)
        self.replayed_steps = 0
        # Why replay ended early, if it did; and the note for the trajectory, made at the
        # first live step after a replay and taken once (``take_note``).
        self._divergence: str | None = None
        self._note: str | None = None
        self._live = False

    @property
    def seed(self) -> int:
        """The job's seed for ``random`` in its sandboxes: the same for every run of it."""
        return int(hashlib.sha256(self.job_id.encode()).hexdigest()[:8], 16)

    @property
    def replaying(self) -> bool:
        with self._lock:
            return self._cursor < len(self._entries)

    def root(self, model: str, messages: Sequence[ChatMessage]) -> Request:
        """Place a root model call: the same id as last time if its request is the same."""
        pairs = [(m["role"], m["content"]) for m in messages]
        digest = _digest("root", model, pairs)
        index, replayed = self._place("root", digest, 1, "the root model's request")
        return Request(
            index=index, call_ids=[f"{self.job_id}:{index}.r.{digest[:10]}"], replayed=replayed
        )

    def request(self, kind: RequestKind, model: str, prompts: Sequence[str]) -> Request:
        """Place a sub-call request: the same ids as last time if it asks the same thing."""
        digest = _digest(kind, model, list(prompts))
        what = f"a sub-call request ({kind}_query, {len(prompts)} prompts)"
        index, replayed = self._place(kind, digest, len(prompts), what)
        return Request(
            index=index,
            call_ids=[self._call_id(kind, index, i, model, p) for i, p in enumerate(prompts)],
            replayed=replayed,
        )

    def unanswered(self) -> None:
        """A step the journal held has no stored answer (its worker died with it): it is
        made live after all, not replayed."""
        with self._lock:
            self.replayed_steps -= 1
            self._going_live()

    def end_replay(self, why: str) -> ReplayEnded:
        """A replay-only run cannot go on (a step without a stored answer): the error to
        raise, and every later step raises it too."""
        with self._lock:
            return self._end(why)

    def take_note(self) -> str | None:
        """What the trajectory should say at the turn where live execution resumed, once."""
        with self._lock:
            note, self._note = self._note, None
            return note

    # ---- internals (called with the lock held) ------------------------------------------

    def _end(self, why: str) -> ReplayEnded:
        if self.replay_ended is None:
            self.replay_ended = f"step {self._cursor + 1}: {why}"
        return ReplayEnded(self.replay_ended)

    def _place(self, kind: str, digest: str, count: int, what: str) -> tuple[int, bool]:
        """The step's position, and whether the journal held this very step there."""
        with self._lock:
            if self.replay_ended is not None:
                raise ReplayEnded(self.replay_ended)
            index = self._requests
            self._requests += 1
            entry = self._next()
            replayed = (
                entry is not None and entry.get("kind") == kind and entry.get("hash") == digest
            )
            if replayed:
                self._cursor += 1
                self.replayed_steps += 1
            elif self.replay_only:
                why = f"{what} differs from the journaled one" if entry else "the journal ends"
                raise self._end(why)
            else:
                if entry is not None:
                    self._diverge(f"{what} differs from the journaled one")
                self._going_live()
                self._append({"kind": kind, "hash": digest, "count": count})
            return index, replayed

    def _call_id(self, kind: RequestKind, index: int, i: int, model: str, prompt: str) -> str:
        # Position and content: the same question at the same place gets the same id (and
        # so the stored answer); a different one, after a divergence, never collides.
        tag = _digest(model, prompt)[:10]
        if kind == "rlm":
            return f"{self.job_id}.{index}-{i}-{tag}"  # a child job id (keys.root_job_id)
        return f"{self.job_id}:{index}.{i}.{tag}"

    def _going_live(self) -> None:
        if self._live:
            return
        self._live = True
        if self.resumed:
            why = f"; {self._divergence}" if self._divergence else ""
            self._note = (
                f"resumed from the journal: {self.replayed_steps} steps replayed{why}; "
                "live from here"
            )

    def _next(self) -> dict[str, Any] | None:
        return self._entries[self._cursor] if self._cursor < len(self._entries) else None

    def _diverge(self, why: str) -> None:
        dropped = len(self._entries) - self._cursor
        log.info("job %s: replay ends at step %d (%s)", self.job_id, self._cursor + 1, why)
        self._divergence = f"replay ended at step {self._cursor + 1}: {why} ({dropped} dropped)"
        self._entries = self._entries[: self._cursor]
        self._log.truncate(self._cursor)

    def _append(self, entry: dict[str, Any]) -> None:
        entry["seq"] = len(self._entries)
        self._entries.append(entry)
        self._cursor = len(self._entries)
        self._log.append(entry)


def _load(raw: list[Any], job_id: str) -> list[dict[str, Any]]:
    """Entries in order: a repeated position is a retried write (dropped), a gap a lost one
    (the replay stops before it)."""
    entries: list[dict[str, Any]] = []
    for item in raw:
        try:
            entry = json.loads(item)
            seq = int(entry["seq"])
        except (ValueError, KeyError, TypeError):
            log.warning("job %s: unreadable journal entry; replay stops there", job_id)
            break
        if seq < len(entries):
            continue
        if seq > len(entries):
            log.warning("job %s: journal entry %d is missing; replay stops there", job_id, seq)
            break
        entries.append(entry)
    return entries


class _RedisLog:
    def __init__(self, client: redis.Redis, job_id: str) -> None:
        self._client = client
        self._key = keys.job_journal(job_id)

    def append(self, entry: dict[str, Any]) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.rpush(self._key, json.dumps(entry, ensure_ascii=False))
        pipe.expire(self._key, keys.RESULT_TTL_S)
        pipe.execute()

    def truncate(self, keep: int) -> None:
        if keep:
            self._client.ltrim(self._key, 0, keep - 1)
        else:  # LTRIM key 0 -1 would keep everything
            self._client.delete(self._key)


class Journals(Protocol):
    """Opens journals, and holds the stored sub-call results they point into."""

    @property
    def calls(self) -> ResultStore: ...

    def open(self, job_id: str, *, replay_only: bool = False) -> Journal:
        """The journal of ``job_id``, ready to replay what an earlier run recorded; with
        ``replay_only``, never to be written."""


class JournalStore:
    """Journals in Redis (AOF makes them durable): what the service and library mode use."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.calls = CallStore(client)

    def open(self, job_id: str, *, replay_only: bool = False) -> Journal:
        entries = _load(self.client.lrange(keys.job_journal(job_id), 0, -1), job_id)
        return Journal(job_id, entries, _RedisLog(self.client, job_id), replay_only=replay_only)


class _MemoryLog:
    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries

    def append(self, entry: dict[str, Any]) -> None:
        self.entries.append(dict(entry))

    def truncate(self, keep: int) -> None:
        del self.entries[keep:]


class MemoryJournals:
    """Journals kept in this process: for jobs that cannot outlive it (the loop's tests)."""

    def __init__(self) -> None:
        self.calls = MemoryResultStore()
        self.logs: dict[str, list[dict[str, Any]]] = {}

    def open(self, job_id: str, *, replay_only: bool = False) -> Journal:
        log_entries = self.logs.setdefault(job_id, [])
        entries = [dict(e) for e in log_entries]
        return Journal(job_id, entries, _MemoryLog(log_entries), replay_only=replay_only)
