"""Dispatchers: how a job's model calls reach a model, root calls and sub-calls alike.

The handler gives a dispatcher one ``CallBatch`` (the root model's request, or the
prompts of one sandbox request, each named by the job's journal) and gets one result per
call, in order, each also streamed to ``on_result`` as it arrives. A call answered before
(a resumed job's) is answered from the job's stored results and never reaches a model
again. ``InProcessDispatcher`` runs the rest on a bounded thread pool (library mode); the
Celery dispatcher in ``workers/`` sends them to the ``rlm.llm`` queue in chunks, so a
call in flight outlives the orchestrator that asked it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from rlm_jobs.calls import ResultStore, StoredCall
from rlm_jobs.clients.base import ChatMessage, ResponseHandle
from rlm_jobs.clients.calls import CallContext, OnWait
from rlm_jobs.errors import JobStopped, RLMJobsError

# One record per concept: the sandbox receives these very results (sandbox.records).
from sandbox.records import SubcallResult, not_run


@dataclass(frozen=True)
class CallBatch:
    """Calls to one model (each a list of messages), with the call id the journal gave each."""

    job_id: str
    model: str
    requests: Sequence[Sequence[ChatMessage]]
    call_ids: Sequence[str]
    # Root call or sub-calls, and the job's batch and cache choice, for the router.
    context: CallContext

    @classmethod
    def of_prompts(
        cls,
        job_id: str,
        model: str,
        prompts: Sequence[str],
        call_ids: Sequence[str],
        context: CallContext,
    ) -> CallBatch:
        """Sub-calls: each prompt is one user message."""
        requests = [[user_message(p)] for p in prompts]
        return cls(job_id, model, requests, call_ids, context)


def user_message(prompt: str) -> ChatMessage:
    return {"role": "user", "content": prompt}


@dataclass(frozen=True)
class Stop:
    """Why a batch must stop waiting."""

    reason: str
    # True when another run of the job will want the answers (a hand-over, a lease taken
    # over): calls already sent are left to finish. False drops them (cancel, limits).
    keep_calls: bool = False


# Called once per call as its result arrives (index into the batch, result), so usage is
# accounted and caps are checked while the rest of the batch is still running.
ResultCallback = Callable[[int, SubcallResult], None]
# Says when the job must stop; calls not yet answered then fail with its reason.
StopCheck = Callable[[], Stop | None]


class Dispatcher(Protocol):
    def run_batch(
        self, batch: CallBatch, *, on_result: ResultCallback, stop: StopCheck
    ) -> list[SubcallResult]: ...

    def close(self) -> None: ...


class Completer(Protocol):
    """What dispatchers need from ``rlm_jobs.clients.router.LLMRouter``."""

    def complete(
        self,
        model_name: str,
        messages: Sequence[ChatMessage],
        max_output_tokens: int | None = None,
        *,
        context: CallContext | None = None,
        on_wait: OnWait | None = None,
        handle: ResponseHandle | None = None,
    ) -> _Priced: ...


class _Priced(Protocol):
    @property
    def text(self) -> str: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cost_usd(self) -> float: ...
    @property
    def cached(self) -> bool: ...
    @property
    def cached_cost_usd(self) -> float: ...
    @property
    def rate_limited_s(self) -> float: ...


def complete_one(
    router: Completer,
    model: str,
    messages: Sequence[ChatMessage],
    *,
    context: CallContext | None = None,
    worker: str = "",
    handle: ResponseHandle | None = None,
) -> SubcallResult:
    """One call, with every failure turned into a result saying so (for a sub-call, the
    error slot the model reads; for a root call, what the loop raises). ``handle`` keeps
    its background response, if it is made as one (``LLMRouter.complete``)."""
    started = time.monotonic()
    try:
        done = router.complete(model, messages, context=context, handle=handle)
    except JobStopped as exc:  # refused before it started (the batch's budget is spent)
        return not_run(exc.reason).replace(refusal=exc.status.value, worker=worker)
    except RLMJobsError as exc:
        return SubcallResult(
            ok=False, text=f"Error: {exc}", latency_s=time.monotonic() - started, worker=worker
        )
    return SubcallResult(
        ok=True,
        text=done.text,
        input_tokens=done.input_tokens,
        output_tokens=done.output_tokens,
        cost_usd=done.cost_usd,
        latency_s=time.monotonic() - started,
        worker=worker,
        cached=done.cached,
        cached_cost_usd=done.cached_cost_usd,
        rate_limited_s=done.rate_limited_s,
    )


class InProcessDispatcher:
    """Runs calls on a bounded thread pool shared by every job of the process, and keeps
    each answer in its job's stored results."""

    def __init__(self, router: Completer, calls: ResultStore, *, concurrency: int) -> None:
        self._router = router
        self._calls = calls
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rlm-subcall")

    def run_batch(
        self, batch: CallBatch, *, on_result: ResultCallback, stop: StopCheck
    ) -> list[SubcallResult]:
        answered = self._calls.lookup(batch.job_id, batch.call_ids)

        def run(index: int) -> SubcallResult:
            call_id = batch.call_ids[index]
            stored = answered.get(call_id)
            if stored is not None:
                result = stored.result
            else:
                halt = stop()
                if halt:
                    result = not_run(halt.reason)  # the loop's own check says how it ends
                else:
                    result = complete_one(
                        self._router, batch.model, batch.requests[index], context=batch.context
                    )
                    self._calls.store(batch.job_id, call_id, StoredCall(result))
            on_result(index, result)
            return result

        futures: list[Future[SubcallResult]] = [
            self._pool.submit(run, i) for i in range(len(batch.call_ids))
        ]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
