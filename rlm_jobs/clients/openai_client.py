"""OpenAI chat completions, and every server that speaks that wire format (vLLM, OpenRouter,
the scripted provider).

Imported lazily by the client registry, so importing ``rlm_jobs.clients`` costs nothing.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

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
        kwargs: dict[str, Any] = {self._max_tokens_param: max_output_tokens}
        if self._extra_headers is not None:
            kwargs["extra_headers"] = dict(self._extra_headers())
        try:
            response = self._sdk.chat.completions.create(
                model=model,
                messages=[_message(m) for m in messages],
                timeout=self._timeout_s,
                **kwargs,
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
        # Without strict validation the SDK builds models from whatever arrived, or hands
        # back the raw text for a non-JSON content type, so every field is checked here.
        if not isinstance(response, ChatCompletion):
            raise malformed(self._provider, f"not a chat completion: {response!r:.200}")
        choices = getattr(response, "choices", None)
        usage = getattr(response, "usage", None)
        if not isinstance(choices, list) or not choices:
            raise malformed(self._provider, "no choices")
        message = getattr(choices[0], "message", None)
        text = getattr(message, "content", None)
        if text is None:
            # A refusal carries its explanation instead of content; surface it as the text.
            text = getattr(message, "refusal", None) or ""
        input_tokens = getattr(usage, "prompt_tokens", None)
        output_tokens = getattr(usage, "completion_tokens", None)
        if not isinstance(text, str):
            raise malformed(self._provider, "message content is not text")
        if not isinstance(input_tokens, int) or not isinstance(output_tokens, int):
            raise malformed(self._provider, "no token usage")
        return Completion(text=text, input_tokens=input_tokens, output_tokens=output_tokens)


def _message(message: ChatMessage) -> ChatCompletionMessageParam:
    # The SDK's message types are a union keyed by role; build the matching one.
    role, content = message["role"], message["content"]
    if role == "system":
        return {"role": "system", "content": content}
    if role == "assistant":
        return {"role": "assistant", "content": content}
    return {"role": "user", "content": content}


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
