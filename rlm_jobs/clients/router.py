"""One entry point for every model: ``"provider/model"`` in, priced completion out."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from rlm_jobs.clients import CLIENT_FACTORIES, ClientFactory, make_client
from rlm_jobs.clients.base import ChatMessage, LLMClient
from rlm_jobs.clients.retry import Sleep
from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError
from rlm_jobs.pricing import cost_usd

__all__ = ["LLMRouter", "PricedCompletion"]


@dataclass(frozen=True)
class PricedCompletion:
    text: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    # The full "provider/model" name, as usage is keyed.
    model: str
    # Wall time of the whole call, retries and their waits included.
    latency_s: float


class LLMRouter:
    """Routes ``"provider/model"`` names to one cached, retrying client per provider.

    Safe to share between threads: the SDK clients are, and the cache is locked. Clients
    are built on first use, so a router made before a worker forks holds no connections.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        factories: Mapping[str, ClientFactory] = CLIENT_FACTORIES,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.settings = settings
        self._factories = factories
        self._sleep = sleep
        self._prices = settings.price_table()
        self._lock = threading.Lock()
        self._clients: dict[str, LLMClient] = {}

    def complete(
        self,
        model_name: str,
        messages: Sequence[ChatMessage],
        max_output_tokens: int | None = None,
    ) -> PricedCompletion:
        provider, model = _split(model_name)
        client = self.client(provider)
        started = time.monotonic()
        completion = client.complete(
            messages,
            model=model,
            max_output_tokens=max_output_tokens or self.settings.max_output_tokens,
        )
        latency_s = time.monotonic() - started
        return PricedCompletion(
            text=completion.text,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cost_usd=cost_usd(
                model_name, completion.input_tokens, completion.output_tokens, self._prices
            ),
            model=model_name,
            latency_s=latency_s,
        )

    def client(self, provider: str) -> LLMClient:
        """The retrying client for ``provider``, built once."""
        with self._lock:
            client = self._clients.get(provider)
            if client is None:
                # Built under the lock: construction does no I/O, and two threads racing
                # here must not leave an orphaned connection pool behind.
                client = make_client(
                    provider, self.settings, factories=self._factories, sleep=self._sleep
                )
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
    provider, sep, model = model_name.partition("/")
    if not sep or not provider or not model:
        raise ConfigError(
            f"model names look like 'provider/model' (e.g. 'openai/gpt-4o-mini'), "
            f"not {model_name!r}"
        )
    return provider, model
