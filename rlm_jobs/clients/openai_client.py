"""OpenAI chat completions, and every server that speaks that wire format (vLLM, OpenRouter,
the scripted provider); with a ``ResponseHandle``, a background response of OpenAI's
Responses API instead (``openai_responses``).

Imported lazily by the client registry, so importing ``rlm_jobs.clients`` costs nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import openai

from rlm_jobs.clients.base import ChatMessage, Completion, ResponseHandle
from rlm_jobs.clients.openai_responses import (
    RESPONSES_PATH,
    PollClock,
    create_body,
    is_count,
    parse_response,
)
from rlm_jobs.clients.translate import malformed, translate_sdk_error
from rlm_jobs.config import Settings
from rlm_jobs.errors import CallAbandoned, ConfigError, ProviderError, ProviderRetryableError

__all__ = ["OpenAIClient", "openai_from_settings", "scripted_from_settings"]

_log = logging.getLogger(__name__)

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
        poll_s: float,
        extra_headers: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self._sdk = sdk
        self._poll_s = poll_s
        self._timeout_s = timeout_s
        self._provider = provider
        self._max_tokens_param = max_tokens_param
        self._extra_headers = extra_headers

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        max_output_tokens: int,
        handle: ResponseHandle | None = None,
    ) -> Completion:
        if handle is not None:
            return self._background(messages, model, max_output_tokens, handle)
        # Sent through the SDK's own request path (auth, timeouts, status errors) but as a
        # plain body, decoded as plain JSON: the typed ``chat.completions.create`` walks
        # its parameter types and builds response models, a large part of the SDK's CPU
        # per call (docs/benchmarks.md), and every field is checked here anyway.
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            self._max_tokens_param: max_output_tokens,
        }
        return self._completion(self._request("post", CHAT_COMPLETIONS_PATH, body))

    def close(self) -> None:
        self._sdk.close()

    def _background(
        self,
        messages: Sequence[ChatMessage],
        model: str,
        max_output_tokens: int,
        handle: ResponseHandle,
    ) -> Completion:
        """A background response (``openai_responses``): created once and kept in
        ``handle``, or, when ``handle`` holds one already, fetched where another worker
        left it. Raises ``CallAbandoned`` once the call is no longer this caller's."""
        response_id = handle.response_id
        if response_id is None:
            body = create_body(messages, model=model, max_output_tokens=max_output_tokens)
            response_id, done = parse_response(
                self._provider, self._request("post", RESPONSES_PATH, body)
            )
            if done is not None:
                return done
            if not handle.keep(response_id):
                self._cancel(response_id)  # nobody will fetch it
                raise CallAbandoned(f"call given up or taken over; {response_id} cancelled")
        clock = PollClock(self._poll_s, self._timeout_s)
        path = f"{RESPONSES_PATH}/{response_id}"
        while True:
            wait_s = clock.next_wait_s()
            if wait_s is None:
                # Stuck at the provider: stop it (unless the call is someone else's now, who
                # may be polling it too), and let the next attempt ask afresh.
                # Asked while the handle still holds the id: a handle that forgot it has
                # nothing to look up, and would always answer "ours".
                if handle.standing() != "theirs":
                    self._cancel(response_id)
                self._forget(handle, response_id)
                raise ProviderRetryableError(
                    f"{self._provider} response {response_id} not done within {self._timeout_s:g}s",
                    code="timeout",
                )
            time.sleep(wait_s)
            standing = handle.standing()
            if standing == "gone":
                self._cancel(response_id)  # nobody will take it: stop paying for it
                raise CallAbandoned(f"nobody will take this answer; {response_id} cancelled")
            if standing == "theirs":
                raise CallAbandoned(f"call taken over; {response_id} left to its new owner")
            try:
                # A poll that hangs must not outlast the deadline by a whole timeout.
                polled = self._request("get", path, timeout_s=max(1.0, clock.remaining_s()))
                _, done = parse_response(self._provider, polled)
            except ProviderRetryableError as exc:
                if exc.code not in ("failed", "cancelled"):
                    # A failed poll (connection, 5xx, 429, a broken body) is only a poll:
                    # look again, without spending one of the router's retries or cooling
                    # the model down for the cluster.
                    _log.warning("polling %s failed (%s); polling on", response_id, exc)
                    continue
                self._forget(handle, response_id)
                raise
            except ProviderError as exc:
                self._forget(handle, response_id)
                if exc.status_code == 404:  # expired, or a provider that lost it
                    raise ProviderRetryableError(
                        f"{self._provider} no longer has response {response_id}",
                        status_code=404,
                        code="expired",
                    ) from exc
                raise
            if done is not None:
                return done

    @staticmethod
    def _forget(handle: ResponseHandle, response_id: str) -> None:
        """The response will not answer the call: the next attempt asks afresh."""
        if not handle.keep(None):
            raise CallAbandoned(f"call given up or taken over; {response_id} ended")

    def _cancel(self, response_id: str) -> None:
        """Stop a response nobody will fetch; best effort, and quick."""
        try:
            self._request("post", f"{RESPONSES_PATH}/{response_id}/cancel", {}, timeout_s=10.0)
        except ProviderError as exc:
            _log.warning("could not cancel response %s: %s", response_id, exc)

    def _request(
        self, method: str, path: str, body: object | None = None, *, timeout_s: float | None = None
    ) -> object:
        """One request through the SDK's own request path (auth, timeouts, status errors),
        decoded as plain JSON; every failure as our error types."""
        options: openai.RequestOptions = {"timeout": timeout_s or self._timeout_s}
        if self._extra_headers is not None:
            options["headers"] = dict(self._extra_headers())
        try:
            if method == "get":
                return self._sdk.get(path, cast_to=object, options=options)
            return self._sdk.post(path, cast_to=object, body=body, options=options)
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        except json.JSONDecodeError as exc:
            # The SDK lets this escape as is when a 200 carries a broken JSON body.
            raise malformed(self._provider, f"body is not JSON ({exc})") from exc

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
        if not is_count(input_tokens) or not is_count(output_tokens):
            raise malformed(self._provider, "no token usage")
        return Completion(text=text, input_tokens=input_tokens, output_tokens=output_tokens)


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
        poll_s=settings.background_poll_s,
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
        poll_s=settings.background_poll_s,
    )
