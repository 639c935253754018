"""A sub-call's life in Redis, between the orchestrator that asks and the llm worker that answers.

Keys (``rlm_jobs.keys``): a record per call waiting for its answer (``subcall``), a claim
per call an llm worker is running (``subcall_claim``, kept alive by that worker), and per
job the results of all its calls (``job_calls``), which outlive the calls: a resumed job
finds there, by call id, every answer it already paid for.

    orchestrator  prepare ──▶ send chunk tasks ──▶ wait (check now and then)
    llm worker                 take (claim) ──▶ provider ──▶ complete (result, reply)

Each step is one Lua script (``rlm_jobs/scripts/call_*.lua``), so no crash between two
commands can leave a call answered twice or not at all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis
from pydantic import ValidationError

from rlm_jobs import keys
from rlm_jobs.clients.base import ChatMessage, Standing
from rlm_jobs.clients.calls import CallContext
from rlm_jobs.errors import StorageError
from rlm_jobs.models import Usage
from rlm_jobs.scripts import source
from sandbox.records import SubcallResult

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredCall:
    """What ``job_calls`` holds for one call: its result, and for a child RLM the usage of
    its whole subtree (an llm call's usage is its result's tokens under the request's model)."""

    result: SubcallResult
    usage: Usage | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = {"result": self.result.to_dict()}
        if self.usage is not None:
            data["usage"] = self.usage.model_dump()
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> StoredCall:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or set(data) - {"result", "usage"}:
                raise ValueError("not a stored call")
            usage = data.get("usage")
            return cls(
                result=SubcallResult.from_dict(data["result"]),
                usage=None if usage is None else Usage.model_validate(usage),
            )
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise StorageError(f"unreadable stored sub-call result: {exc}") from exc


@dataclass(frozen=True)
class Taken:
    """A call an llm worker has claimed: what to ask, and for whom."""

    job_id: str
    model: str
    messages: list[ChatMessage]
    context: CallContext
    # The background response a worker that died while running the call left behind.
    response_id: str | None = None


# What ``check`` says of a call still awaited.
Pending = Literal["claimed", "unclaimed", "lapsed", "lost"]
_PENDING: dict[bytes, Pending] = {
    b"C": "claimed",
    b"U": "unclaimed",
    b"L": "lapsed",
    b"X": "lost",
}


class ResultStore(Protocol):
    """Where a job's sub-call results are kept by call id: what replay reads."""

    def lookup(self, job_id: str, call_ids: Sequence[str]) -> dict[str, StoredCall]: ...

    def store(self, job_id: str, call_id: str, stored: StoredCall) -> None: ...


class MemoryResultStore:
    """Results kept in this process only: a job that cannot outlive its process (tests)."""

    def __init__(self) -> None:
        self._results: dict[tuple[str, str], StoredCall] = {}

    def lookup(self, job_id: str, call_ids: Sequence[str]) -> dict[str, StoredCall]:
        found = ((c, self._results.get((job_id, c))) for c in call_ids)
        return {c: stored for c, stored in found if stored is not None}

    def store(self, job_id: str, call_id: str, stored: StoredCall) -> None:
        self._results[(job_id, call_id)] = stored


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CallStore:
    """The scripts of a sub-call's life, registered once per client."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._prepare = client.register_script(source("call_prepare"))
        self._take = client.register_script(source("call_take"))
        self._complete = client.register_script(source("call_complete"))
        self._check = client.register_script(source("call_check"))
        self._response = client.register_script(source("call_response"))
        self._renew = client.register_script(source("renew"))

    # ---- the orchestrator's side ---------------------------------------------------------

    def prepare(
        self,
        job_id: str,
        model: str,
        waiter_id: str,
        call_ids: Sequence[str],
        requests: Sequence[Sequence[ChatMessage]],
        context: CallContext,
    ) -> dict[str, StoredCall]:
        """Record the calls to send; returns those answered already (a resumed job's)."""
        if not call_ids:
            return {}
        cache = "" if context.cache is None else str(int(context.cache))
        raw = self._prepare(
            keys=[keys.job_calls(job_id), *(keys.subcall(c) for c in call_ids)],
            args=[
                job_id,
                model,
                waiter_id,
                keys.SANDBOX_KEY_TTL_S,
                context.batch_id or "",
                cache,
                context.kind,
                *call_ids,
                *(json.dumps(list(r), ensure_ascii=False) for r in requests),
            ],
        )
        return {c: StoredCall.from_json(v) for c, v in zip(call_ids, raw, strict=True) if v}

    def check(
        self, job_id: str, call_ids: Sequence[str], queue: str
    ) -> tuple[int, dict[str, Pending | StoredCall]]:
        """The llm queue's length, and where each awaited call stands (a result if it has
        one: its reply was lost). A lapsed claim is cleared, so it is reported once."""
        call_keys = [k for c in call_ids for k in (keys.subcall(c), keys.subcall_claim(c))]
        raw = self._check(keys=[keys.job_calls(job_id), queue, *call_keys], args=list(call_ids))
        states: dict[str, Pending | StoredCall] = {}
        for call_id, value in zip(call_ids, raw[1:], strict=True):
            pending = _PENDING.get(value if isinstance(value, bytes) else _text(value).encode())
            states[call_id] = pending if pending is not None else StoredCall.from_json(value)
        return int(raw[0]), states

    def abandon(self, call_ids: Sequence[str]) -> None:
        """Give calls up: a worker that has not started them skips them."""
        if call_ids:
            self.client.delete(*(keys.subcall(c) for c in call_ids))

    def lookup(self, job_id: str, call_ids: Sequence[str]) -> dict[str, StoredCall]:
        """The stored results among ``call_ids``."""
        if not call_ids:
            return {}
        raw = self.client.hmget(keys.job_calls(job_id), list(call_ids))
        return {c: StoredCall.from_json(v) for c, v in zip(call_ids, raw, strict=True) if v}

    def store(self, job_id: str, call_id: str, stored: StoredCall) -> None:
        """Keep a result produced in this process (library mode's sub-calls, child RLMs)."""
        self.client.hset(keys.job_calls(job_id), call_id, stored.to_json())

    # ---- the llm worker's side -----------------------------------------------------------

    def take(
        self, root_job_id: str, call_ids: Sequence[str], token: str, claim_ttl_s: float
    ) -> tuple[str | None, dict[str, Taken | Literal["gone", "busy", "malformed"]]]:
        """Claim the chunk's calls still waiting; the job's cancel reason if it has one.

        A claimed record missing a field is "malformed": the worker answers it with an
        error, so its orchestrator does not wait for it forever."""
        call_keys = [k for c in call_ids for k in (keys.subcall(c), keys.subcall_claim(c))]
        raw = self._take(
            keys=[keys.job_cancel(root_job_id), *call_keys], args=[token, _ms(claim_ttl_s)]
        )
        cancelled = None if raw[0] is None else _text(raw[0])
        taken: dict[str, Taken | Literal["gone", "busy", "malformed"]] = {}
        for call_id, value in zip(call_ids, raw[1:], strict=True):
            if isinstance(value, list):
                taken[call_id] = _taken(*(None if v is None else _text(v) for v in value))
            else:
                taken[call_id] = "gone" if _text(value) == "gone" else "busy"
        return cancelled, taken

    def renew_claims(self, claims: Mapping[str, str], claim_ttl_s: float) -> list[str]:
        """Keep the claims (call id -> token) of calls still running; those another worker
        holds now are returned (their answer will be one of two)."""
        by_key = {keys.subcall_claim(c): c for c in claims}
        taken = renew_keys(self._renew, {k: claims[c] for k, c in by_key.items()}, claim_ttl_s)
        return [by_key[k] for k in taken]

    def keep_response(self, call_id: str, token: str, response_id: str | None) -> bool:
        """Keep the call's background response id in its record (None forgets it), if
        ``token`` still holds its claim; False when the record is gone (the call was
        answered or given up) or another worker holds the claim."""
        written = self._response(
            keys=[keys.subcall(call_id), keys.subcall_claim(call_id)],
            args=[token, response_id or ""],
        )
        return int(written) == 1

    def standing(self, call_id: str, token: str, response_id: str) -> Standing:
        """Where the call stands for the worker holding ``token`` and waiting for
        ``response_id``: "gone" once its record is (answered or given up: nobody takes
        this answer) or once another worker holds its claim without this response's id
        (it asks afresh: nobody fetches this one); "theirs" when the new owner fetches
        this response. A lapsed claim nobody took yet is still "ours": this worker's
        keeper takes it back at its next renewal."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(keys.subcall(call_id), ["waiter", "response"])  # every record has a waiter
        pipe.get(keys.subcall_claim(call_id))
        (waiter, kept), holder = pipe.execute()
        if waiter is None:
            return "gone"
        if holder is None or _text(holder) == token:
            return "ours"
        return "theirs" if kept is not None and _text(kept) == response_id else "gone"

    def complete(self, job_id: str, call_id: str, stored: StoredCall, reply: str) -> bool:
        """Answer the call; False when it was answered already or given up."""
        done = self._complete(
            keys=[keys.subcall(call_id), keys.subcall_claim(call_id), keys.job_calls(job_id)],
            args=[
                call_id,
                stored.to_json(),
                reply,
                keys.SUBCALL_REPLIES_PREFIX,
                keys.SANDBOX_KEY_TTL_S,
            ],
        )
        return bool(done)


def _taken(
    job: str | None,
    model: str | None,
    messages: str | None,
    batch: str | None,
    cache: str | None,
    kind: str | None,
    response: str | None = None,
) -> Taken | Literal["malformed"]:
    """A claimed record as a call to make; "malformed" if it cannot be one."""
    if job is None or model is None or messages is None or kind not in ("root", "sub"):
        return "malformed"
    try:
        parsed = json.loads(messages)
    except ValueError:
        return "malformed"
    if not isinstance(parsed, list) or not all(_is_message(m) for m in parsed) or not parsed:
        return "malformed"
    context = CallContext(
        job_id=job,
        batch_id=batch or None,
        kind="root" if kind == "root" else "sub",
        cache=None if not cache else cache == "1",
    )
    return Taken(job, model, parsed, context, response or None)


def _is_message(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"role", "content"}
        and value["role"] in ("system", "user", "assistant")
        and isinstance(value["content"], str)
    )


class RecordHandle:
    """A claimed call's ``ResponseHandle``: its background response id, kept in the call's
    record (which ends with the call), so whoever takes the call over finds it."""

    def __init__(self, calls: CallStore, call_id: str, token: str, response_id: str | None) -> None:
        self._calls = calls
        self._call_id = call_id
        self._token = token
        self.response_id = response_id

    def keep(self, response_id: str | None) -> bool:
        self.response_id = response_id
        try:
            return self._calls.keep_response(self._call_id, self._token, response_id)
        except redis.RedisError as exc:
            # The response is paid for: going on with its id in memory beats asking again.
            # Only a takeover during the outage would ask the provider a second time.
            _log.warning(
                "could not keep response %s of call %s: %r", response_id, self._call_id, exc
            )
            return True

    def standing(self) -> Standing:
        if self.response_id is None:
            return "ours"  # nothing generated for this call yet
        try:
            return self._calls.standing(self._call_id, self._token, self.response_id)
        except redis.RedisError as exc:
            # Past an outage the call's own answer needs Redis anyway; cancelling a
            # response that may still be wanted would pay for it again.
            _log.debug("could not read where call %s stands: %r", self._call_id, exc)
            return "ours"


def renew_keys(script: Any, holders: Mapping[str, str], ttl_s: float) -> list[str]:
    """Take or renew keys -> holders with ``renew.lua``; the keys someone else holds."""
    names = list(holders)
    if not names:
        return []
    taken = script(keys=names, args=[_ms(ttl_s), *(holders[k] for k in names)])
    return [names[int(i) - 1] for i in taken]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
