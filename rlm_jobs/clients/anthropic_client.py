"""Anthropic messages API.

Imported lazily by the client registry, so importing ``rlm_jobs.clients`` costs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anthropic
from anthropic.types import Message, MessageParam

from rlm_jobs.clients.base import ChatMessage, Completion, ResponseHandle
from rlm_jobs.clients.translate import malformed, translate_sdk_error
from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError, ProviderError

__all__ = ["AnthropicClient", "anthropic_from_settings", "split_system"]

# Passed explicitly so the SDK never reads ANTHROPIC_BASE_URL itself: Settings is the only
# reader of the environment.
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"
PROVIDER = "anthropic"


def split_system(messages: Sequence[ChatMessage]) -> tuple[str | None, list[MessageParam]]:
    """The messages API takes system text as a parameter, not as a message."""
    system: list[str] = []
    turns: list[MessageParam] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            system.append(content)
        elif role == "assistant":
            turns.append({"role": "assistant", "content": content})
        else:
            turns.append({"role": "user", "content": content})
    return ("\n\n".join(system) if system else None), turns


class AnthropicClient:
    """``LLMClient`` over ``anthropic.Anthropic``; raises only ProviderError and its subclass."""

    def __init__(self, sdk: anthropic.Anthropic, *, timeout_s: float) -> None:
        self._sdk = sdk
        self._timeout_s = timeout_s

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        max_output_tokens: int,
        handle: ResponseHandle | None = None,
    ) -> Completion:
        # Anthropic has no background responses (its Message Batches take minutes to
        # hours): ``handle`` is ignored and a call cut off by a dead worker is asked again.
        system, turns = split_system(messages)
        kwargs: dict[str, Any] = {} if system is None else {"system": system}
        try:
            response = self._sdk.messages.create(
                model=model,
                max_tokens=max_output_tokens,
                messages=turns,
                timeout=self._timeout_s,
                **kwargs,
            )
        except anthropic.AnthropicError as exc:
            raise self._translate(exc) from exc
        except json.JSONDecodeError as exc:
            # The SDK lets this escape as is when a 200 carries a broken JSON body.
            raise malformed(PROVIDER, f"body is not JSON ({exc})") from exc
        return _completion(response)

    def close(self) -> None:
        self._sdk.close()

    def _translate(self, exc: anthropic.AnthropicError) -> ProviderError:
        return translate_sdk_error(anthropic, PROVIDER, exc, self._timeout_s)


def _completion(response: object) -> Completion:
    # Without strict validation the SDK builds models from whatever arrived, or hands back
    # the raw text for a non-JSON content type, so every field is checked here.
    if not isinstance(response, Message):
        raise malformed(PROVIDER, f"not a message: {response!r:.200}")
    blocks = getattr(response, "content", None)
    usage = getattr(response, "usage", None)
    if not isinstance(blocks, list):
        raise malformed(PROVIDER, "no content blocks")
    texts = [getattr(b, "text", None) for b in blocks if getattr(b, "type", None) == "text"]
    if not all(isinstance(t, str) for t in texts):
        raise malformed(PROVIDER, "a text block without text")
    input_tokens = getattr(usage, "input_tokens", None)
    output_tokens = getattr(usage, "output_tokens", None)
    if not isinstance(input_tokens, int) or not isinstance(output_tokens, int):
        raise malformed(PROVIDER, "no token usage")
    # Cached prompt tokens are reported apart from input_tokens but are still input.
    for extra in ("cache_creation_input_tokens", "cache_read_input_tokens"):
        cached = getattr(usage, extra, None)
        if isinstance(cached, int):
            input_tokens += cached
    return Completion(
        text="".join(t for t in texts if isinstance(t, str)),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def anthropic_from_settings(settings: Settings) -> AnthropicClient:
    if settings.anthropic_api_key is None:
        raise ConfigError(
            "the anthropic provider needs an API key: set ANTHROPIC_API_KEY "
            "(or RLM_JOBS_ANTHROPIC_API_KEY)"
        )
    sdk = anthropic.Anthropic(
        api_key=settings.anthropic_api_key.get_secret_value(),
        base_url=settings.anthropic_base_url or ANTHROPIC_DEFAULT_BASE_URL,
        timeout=settings.request_timeout_s,
        max_retries=0,
    )
    return AnthropicClient(sdk, timeout_s=settings.request_timeout_s)
