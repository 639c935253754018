"""LLM clients: a registry of provider name → factory.

Each factory imports its SDK when first called, so importing this package loads neither
``openai`` nor ``anthropic``. ``build_client`` gives a bare client (one attempt per call);
``make_client`` wraps it in our retry loop. ``LLMRouter`` (``clients.router``) is what
callers normally want: it retries too, and applies the cluster's rate limits, response
cache and batch budgets (``rlm_jobs.providers``), told about each call by a
``CallContext`` (``clients.calls``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from pydantic import TypeAdapter, ValidationError

from rlm_jobs.clients.base import ChatMessage, Completion, LLMClient
from rlm_jobs.clients.calls import CallContext, CallObserver, NullCallObserver
from rlm_jobs.clients.retry import RetryingClient, RetryPolicy, Sleep
from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError, SpecError
from rlm_jobs.models import ModelName, split_model_name

__all__ = [
    "CLIENT_FACTORIES",
    "CallContext",
    "CallObserver",
    "ChatMessage",
    "ClientFactory",
    "Completion",
    "LLMClient",
    "NullCallObserver",
    "build_client",
    "check_model",
    "make_client",
]

ClientFactory = Callable[[Settings], LLMClient]


def _sdk_missing(package: str, exc: ImportError) -> ConfigError:
    return ConfigError(f"the {package} SDK is not installed: pip install {package} ({exc})")


def _openai(settings: Settings) -> LLMClient:
    try:
        from rlm_jobs.clients.openai_client import openai_from_settings
    except ImportError as exc:
        raise _sdk_missing("openai", exc) from exc
    return openai_from_settings(settings)


def _anthropic(settings: Settings) -> LLMClient:
    try:
        from rlm_jobs.clients.anthropic_client import anthropic_from_settings
    except ImportError as exc:
        raise _sdk_missing("anthropic", exc) from exc
    return anthropic_from_settings(settings)


def _scripted(settings: Settings) -> LLMClient:
    try:
        from rlm_jobs.clients.openai_client import scripted_from_settings
    except ImportError as exc:
        raise _sdk_missing("openai", exc) from exc
    return scripted_from_settings(settings)


CLIENT_FACTORIES: dict[str, ClientFactory] = {
    "openai": _openai,
    "anthropic": _anthropic,
    # The OpenAI wire format pointed at our own offline server (rlm_jobs.testing).
    "scripted": _scripted,
}


def build_client(
    provider: str,
    settings: Settings,
    factories: Mapping[str, ClientFactory] = CLIENT_FACTORIES,
) -> LLMClient:
    """A bare client for ``provider``: every call is one attempt."""
    factory = factories.get(provider)
    if factory is None:
        known = ", ".join(sorted(factories))
        raise ConfigError(f"unknown LLM provider {provider!r}; known providers: {known}")
    return factory(settings)


def make_client(
    provider: str,
    settings: Settings,
    *,
    factories: Mapping[str, ClientFactory] = CLIENT_FACTORIES,
    sleep: Sleep = time.sleep,
) -> LLMClient:
    """A client for ``provider`` that retries per ``settings`` (see ``clients.retry``)."""
    return RetryingClient(
        build_client(provider, settings, factories),
        RetryPolicy.from_settings(settings),
        sleep=sleep,
        provider=provider,
    )


_MODEL_NAME: TypeAdapter[str] = TypeAdapter(ModelName)


def check_model(name: str) -> str:
    """Refuse a model we could never call, before any job naming it is recorded."""
    try:
        _MODEL_NAME.validate_python(name)
    except ValidationError:
        raise SpecError(
            f"model {name!r} must look like provider/name, e.g. openai/gpt-4o-mini"
        ) from None
    provider, _ = split_model_name(name)
    if provider not in CLIENT_FACTORIES:
        known = ", ".join(sorted(CLIENT_FACTORIES))
        raise SpecError(f"unknown provider {provider!r} in model {name!r}; known: {known}")
    return name
