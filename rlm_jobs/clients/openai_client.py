"""OpenAI chat completions, and every server that speaks that wire format (vLLM, OpenRouter,
the scripted provider).

Imported lazily by the client registry, so importing ``rlm_jobs.clients`` costs nothing.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeGuard

import openai

from rlm_jobs.clients.base import ChatMessage, Completion
from rlm_jobs.clients.translate import malformed, translate_sdk_error
from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError, ProviderError

__all__ = ["OpenAIClient", "openai_from_settings", "scripted_from_settings"]

# Passed explicitly so the SDK never falls back to reading OPENAI_BASE_URL itself:
# Settings is the only reader of the environment.
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
# The scripted provider ignores the key, but the SDK refuses to start without one.
SCRIPTED_API_KEY = "scripted-no-key"
WORKER_HEADER = "X-RLM-Worker"
# Relative to the client's base URL, as the SDK's own chat.completions.create sends it.
CHAT_COMPLETIONS_PATH = "/chat/completions"

# OpenAI's own API wants max_completion_tokens (reasoning models reject max_tokens);
# compatible servers have accepted max_tokens far longer than the newer name.
MaxTokensParam = Literal["max_tokens", "max_completion_tokens"]


def worker_identity() -> dict[str, str]:
    """Which process sent a request; read per call because pool workers fork after import."""
    return {WORKER_HEADER: f"{socket.gethostname()}:{os.getpid()}"}


class OpenAIClient:
    """``LLMClient`` over ``openai.OpenAI``; raises only ProviderError and its subclass."""

    def __init__(
        self,
        sdk: openai.OpenAI,
        *,
        timeout_s: float,
        provider: str = "openai",
        max_tokens_param: MaxTokensParam = "max_tokens",
        extra_headers: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self._sdk = sdk
        self._timeout_s = timeout_s
        self._provider = provider
        self._max_tokens_param = max_tokens_param
        self._extra_headers = extra_headers

    def complete(
        self, messages: Sequence[ChatMessage], *, model: str, max_output_tokens: int
    ) -> Completion:
        # Sent through the SDK's own request path (auth, timeouts, status errors) but as a
        # plain body, decoded as plain JSON: the typed ``chat.completions.create`` walks
        # its parameter types and builds response models, a large part of the SDK's CPU
        # per call (docs/benchmarks.md), and every field is checked here anyway.
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            self._max_tokens_param: max_output_tokens,
        }
        options: openai.RequestOptions = {"timeout": self._timeout_s}
        if self._extra_headers is not None:
            options["headers"] = dict(self._extra_headers())
        try:
            response = self._sdk.post(
                CHAT_COMPLETIONS_PATH,
                cast_to=object,
                body=body,
                options=options,
            )
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        except json.JSONDecodeError as exc:
            # The SDK lets this escape as is when a 200 carries a broken JSON body.
            raise malformed(self._provider, f"body is not JSON ({exc})") from exc
        return self._completion(response)

    def close(self) -> None:
        self._sdk.close()

    def _translate(self, exc: openai.OpenAIError) -> ProviderError:
        return translate_sdk_error(openai, self._provider, exc, self._timeout_s)

    def _completion(self, response: object) -> Completion:
        # The SDK hands back the decoded JSON, or the raw text for a non-JSON content type.
        if not isinstance(response, dict):
            raise malformed(self._provider, f"not a chat completion: {response!r:.200}")
        choices = response.get("choices")
        usage = response.get("usage")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise malformed(self._provider, "no choices")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise malformed(self._provider, "a choice without a message")
        text = message.get("content")
        if text is None:
            # A refusal carries its explanation instead of content; surface it as the text.
            text = message.get("refusal") or ""
        if not isinstance(text, str):
            raise malformed(self._provider, "message content is not text")
        input_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        output_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if not _is_count(input_tokens) or not _is_count(output_tokens):
            raise malformed(self._provider, "no token usage")
        return Completion(text=text, input_tokens=input_tokens, output_tokens=output_tokens)


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def openai_from_settings(settings: Settings) -> OpenAIClient:
    if settings.openai_api_key is None:
        raise ConfigError(
            "the openai provider needs an API key: set OPENAI_API_KEY (or RLM_JOBS_OPENAI_API_KEY)"
        )
    base_url = settings.openai_base_url or OPENAI_DEFAULT_BASE_URL
    sdk = openai.OpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=base_url,
        timeout=settings.request_timeout_s,
        max_retries=0,
    )
    return OpenAIClient(
        sdk,
        timeout_s=settings.request_timeout_s,
        max_tokens_param="max_tokens" if settings.openai_base_url else "max_completion_tokens",
    )


def scripted_from_settings(settings: Settings) -> OpenAIClient:
    if not settings.scripted_base_url:
        raise ConfigError(
            "the scripted provider needs RLM_JOBS_SCRIPTED_BASE_URL; start one with "
            "`python -m rlm_jobs.testing.provider --port 8765`"
        )
    sdk = openai.OpenAI(
        api_key=SCRIPTED_API_KEY,
        base_url=settings.scripted_base_url,
        timeout=settings.request_timeout_s,
        max_retries=0,
    )
    return OpenAIClient(
        sdk,
        timeout_s=settings.request_timeout_s,
        provider="scripted",
        extra_headers=worker_identity,
    )
