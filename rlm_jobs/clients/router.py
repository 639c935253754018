"""One entry point for every model: ``"provider/model"`` in, priced completion out.

With ``ProviderControls`` (Redis-backed; the workers, the local stack and library mode
pass them) a call goes through, in order:

1. the batch budget of ``CallContext.batch_id``: refused once spent (``JobStopped``
   with ``BUDGET_EXCEEDED``);
2. the response cache, when the call may be cached: a hit costs $0 and ends here;
3. per attempt, a rate-limit slot for the model (waiting is reported to ``on_wait`` and
   the observer, and is not an error); a 429 with Retry-After cools the model down for
   the whole cluster;
4. after the reply, one round trip records the spend, corrects the token reservation
   and stores the reply in the cache.

Retries follow ``RetryPolicy`` (``clients.retry``). The ``CallObserver`` hears about
every attempt's provider error, every wait and every finished call.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from rlm_jobs.clients import CLIENT_FACTORIES, ClientFactory, build_client
from rlm_jobs.clients.base import ChatMessage, Completion, LLMClient, ResponseHandle
from rlm_jobs.clients.calls import CallContext, CallObserver, NullCallObserver, OnWait
from rlm_jobs.clients.retry import RetryPolicy, Sleep, gave_up, retry_delay_s
from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError, JobStopped, ProviderError, ProviderRetryableError
from rlm_jobs.models import JobStatus, split_model_name
from rlm_jobs.pricing import cost_usd
from rlm_jobs.providers.cache import CachedReply, request_digest
from rlm_jobs.providers.controls import CallSettlement, ProviderControls
from rlm_jobs.providers.estimate import message_tokens

__all__ = ["LLMRouter", "PricedCompletion"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PricedCompletion:
    text: str
    input_tokens: int
    output_tokens: int
    # 0.0 for a cached answer; what it would have cost is ``cached_cost_usd``.
    cost_usd: float
    # The full "provider/model" name, as usage is keyed.
    model: str
    # Wall time of the whole call, retries and their waits included.
    latency_s: float
    cached: bool = False
    cached_cost_usd: float = 0.0
    # Of ``latency_s``, the time spent waiting for rate-limit slots and cool-downs.
    rate_limited_s: float = 0.0


class LLMRouter:
    """Routes ``"provider/model"`` names to one cached client per provider.

    Safe to share between threads: the SDK clients are, and the cache is locked. Clients
    are built on first use, so a router made before a worker forks holds no connections.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        controls: ProviderControls | None = None,
        observer: CallObserver | None = None,
        factories: Mapping[str, ClientFactory] = CLIENT_FACTORIES,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.settings = settings
        self.controls = controls
        self.observer: CallObserver = observer or NullCallObserver()
        self._factories = factories
        self._sleep = sleep
        self._policy = RetryPolicy.from_settings(settings)
        self._prices = settings.price_table()
        self._lock = threading.Lock()
        self._clients: dict[str, LLMClient] = {}

    def complete(
        self,
        model_name: str,
        messages: Sequence[ChatMessage],
        max_output_tokens: int | None = None,
        *,
        context: CallContext | None = None,
        on_wait: OnWait | None = None,
        handle: ResponseHandle | None = None,
    ) -> PricedCompletion:
        """``handle``: where the call's background response is kept, when the call may be
        one (``background_calls`` covers its kind); without one it is an ordinary call."""
        ctx = context or CallContext()
        background = self.settings.background_calls
        if background == "none" or (background == "root" and ctx.kind != "root"):
            handle = None
        provider, model = _split(model_name)
        client = self.client(provider)
        max_out = max_output_tokens or self.settings.max_output_tokens
        started = time.monotonic()
        controls = self.controls
        budget_batch = None
        # Why the batch may ask for nothing new, when this call goes on only to fetch a
        # response already asked for.
        spent = None
        digest = None
        if controls is not None:
            if ctx.batch_id is not None:
                state = controls.budgets.state(ctx.batch_id)
                if state is not None:
                    spent = state.exhausted()
                    # A response already asked for (a call taken over) is paid for: it is
                    # fetched and counted, not refused.
                    if spent and (handle is None or handle.response_id is None):
                        raise JobStopped(JobStatus.BUDGET_EXCEEDED, spent)
                    budget_batch = ctx.batch_id
            if self.settings.cache if ctx.cache is None else ctx.cache:
                digest = request_digest(model_name, messages, max_out)
                hit = controls.cache.get(digest)
                if hit is not None:
                    return self._from_cache(model_name, ctx, hit, started)
        reserved = message_tokens(messages)
        completion, waited = self._attempts(
            client, model_name, model, messages, max_out, reserved, on_wait, handle, spent
        )
        cost = cost_usd(model_name, completion.input_tokens, completion.output_tokens, self._prices)
        if controls is not None:
            controls.settle(
                CallSettlement(
                    model_name=model_name,
                    input_tokens=completion.input_tokens,
                    output_tokens=completion.output_tokens,
                    cost_usd=cost,
                    reserved_tokens=reserved,
                    budget_batch_id=budget_batch,
                    cache_digest=digest,
                    reply=CachedReply(
                        text=completion.text,
                        input_tokens=completion.input_tokens,
                        output_tokens=completion.output_tokens,
                    ),
                )
            )
        self.observer.call_done(
            model_name, ctx.kind, completion.input_tokens, completion.output_tokens, cost, False
        )
        return PricedCompletion(
            text=completion.text,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cost_usd=cost,
            model=model_name,
            latency_s=time.monotonic() - started,
            rate_limited_s=waited,
        )

    def _from_cache(
        self, model_name: str, ctx: CallContext, hit: CachedReply, started: float
    ) -> PricedCompletion:
        would_cost = cost_usd(model_name, hit.input_tokens, hit.output_tokens, self._prices)
        self.observer.call_done(
            model_name, ctx.kind, hit.input_tokens, hit.output_tokens, 0.0, True
        )
        return PricedCompletion(
            text=hit.text,
            input_tokens=hit.input_tokens,
            output_tokens=hit.output_tokens,
            cost_usd=0.0,
            model=model_name,
            latency_s=time.monotonic() - started,
            cached=True,
            cached_cost_usd=would_cost,
        )

    def _attempts(
        self,
        client: LLMClient,
        model_name: str,
        model: str,
        messages: Sequence[ChatMessage],
        max_output_tokens: int,
        reserved_tokens: int,
        on_wait: OnWait | None,
        handle: ResponseHandle | None,
        spent: str | None,
    ) -> tuple[Completion, float]:
        """The call with its retries; returns the completion and the seconds spent waiting
        for rate-limit slots. Every attempt that asks the provider takes its own slot; one
        that fetches a background response already asked for (a call taken over, a poll
        that failed) does not: it generates nothing. ``spent``: the batch's budget ran out,
        so an attempt that would ask anew (the response taken over is gone) is refused.
        """
        limiter = self.controls.limiter if self.controls is not None else None
        waited = 0.0
        attempt = 0
        while True:
            asks = handle is None or handle.response_id is None
            if asks and spent:
                raise JobStopped(JobStatus.BUDGET_EXCEEDED, spent)
            if limiter is not None and asks:
                wait_s = limiter.acquire(model_name, reserved_tokens, on_wait)
                if wait_s > 0:
                    waited += wait_s
                    self.observer.rate_limit_wait(model_name, wait_s)
            try:
                completion = client.complete(
                    messages, model=model, max_output_tokens=max_output_tokens, handle=handle
                )
                return completion, waited
            except ProviderRetryableError as exc:
                self.observer.provider_error(model_name, exc.code)
                retry_after = exc.retry_after_s
                cooled = (
                    limiter is not None
                    and exc.status_code == 429
                    and retry_after is not None
                    and limiter.cool_down(model_name, retry_after)
                )
                if cooled and retry_after is not None and retry_after <= self._policy.max_s:
                    # The cool-down holds this call back with every other: back off only.
                    retry_after = None
                delay_s = (
                    retry_delay_s(self._policy, attempt, retry_after, random.uniform)
                    if attempt < self._policy.max_retries
                    else None
                )
                if delay_s is None:
                    raise gave_up(exc, attempt + 1, self._policy) from exc
                _log.warning(
                    "completion from %s failed (%s); retry %d of %d in %.2fs",
                    model_name,
                    exc,
                    attempt + 1,
                    self._policy.max_retries,
                    delay_s,
                )
                self._sleep(delay_s)
                attempt += 1
            except ProviderError as exc:
                self.observer.provider_error(model_name, exc.code)
                raise

    def client(self, provider: str) -> LLMClient:
        """The client for ``provider`` (one attempt per call; retries are the router's)."""
        with self._lock:
            client = self._clients.get(provider)
            if client is None:
                # Built under the lock: construction does no I/O, and two threads racing
                # here must not leave an orphaned connection pool behind.
                client = build_client(provider, self.settings, self._factories)
                self._clients[provider] = client
            return client

    def warm_up(self, *model_names: str) -> None:
        """Build the clients these models need now rather than on their first call.

        Importing an SDK takes seconds on a busy machine; a worker that calls this when it
        starts keeps that out of the first batch of sub-calls. No network I/O happens.
        """
        for name in model_names:
            self.client(_split(name)[0])

    def close(self) -> None:
        """Close every client; a later call builds fresh ones."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> LLMRouter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _split(model_name: str) -> tuple[str, str]:
    try:
        return split_model_name(model_name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
