"""OpenAI's Responses API in background mode: a call that survives the process making it.

The request is accepted at once (``POST /responses`` with ``background: true``) and the
provider generates the answer whether or not anyone waits; the caller keeps the response
id in its ``ResponseHandle`` and polls ``GET /responses/{id}`` until it is done. A worker
that dies mid-call leaves the id behind, and the worker that takes the call over fetches
the same response: the call is paid once. Only the moment between the provider accepting
the request and the id being kept can still lose one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeGuard

from rlm_jobs.clients.base import ChatMessage, Completion
from rlm_jobs.clients.translate import malformed
from rlm_jobs.errors import ProviderError, ProviderRetryableError

__all__ = ["RESPONSES_PATH", "PollClock", "create_body", "is_count", "parse_response"]

RESPONSES_PATH = "/responses"
# Statuses of a response still being generated.
RUNNING = frozenset({"queued", "in_progress"})
# ``error.code`` of a failed response that another attempt may get past.
_RETRYABLE_CODES = frozenset({"server_error", "rate_limit_exceeded"})
# Polls grow with the wait, so a long generation costs few requests and a short one is
# seen soon: a tenth of the time waited so far, between the floor and this cap.
_POLL_CAP_S = 5.0


def create_body(
    messages: Sequence[ChatMessage], *, model: str, max_output_tokens: int
) -> dict[str, Any]:
    return {
        "model": model,
        "input": [{"role": m["role"], "content": m["content"]} for m in messages],
        "max_output_tokens": max_output_tokens,
        "background": True,
        # Background mode requires a stored response: that is what the id fetches.
        "store": True,
    }


class PollClock:
    """When to look again at a response, and when to give up waiting for it."""

    def __init__(
        self, floor_s: float, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._floor_s = floor_s
        self._clock = clock
        self._started = clock()
        self._deadline = self._started + timeout_s

    def remaining_s(self) -> float:
        return max(0.0, self._deadline - self._clock())

    def next_wait_s(self) -> float | None:
        """Seconds to sleep before the next poll; None once the deadline has passed."""
        now = self._clock()
        if now >= self._deadline:
            return None
        wait_s = max(self._floor_s, min(_POLL_CAP_S, 0.1 * (now - self._started)))
        return min(wait_s, self._deadline - now)


def parse_response(provider: str, response: object) -> tuple[str, Completion | None]:
    """(id, the completion once there is one): None while the response is being generated.

    A failed or cancelled response raises: ``ProviderRetryableError`` when another attempt
    may succeed, ``ProviderError`` when the request itself was refused.
    """
    if not isinstance(response, dict):
        raise malformed(provider, f"not a response: {response!r:.200}")
    response_id = response.get("id")
    status = response.get("status")
    if not isinstance(response_id, str) or not response_id or not isinstance(status, str):
        raise malformed(provider, "a response without an id or a status")
    if status in RUNNING:
        return response_id, None
    if status == "failed":
        raise _failure(provider, response_id, response.get("error"))
    if status == "cancelled":
        raise ProviderRetryableError(
            f"{provider} cancelled response {response_id}", code="cancelled"
        )
    if status not in ("completed", "incomplete"):
        raise malformed(provider, f"unknown response status {status!r}")
    # "incomplete" (out of output tokens) keeps what was generated, as a chat completion
    # cut off by max_tokens does.
    return response_id, _completion(provider, response)


def _failure(provider: str, response_id: str, error: object) -> ProviderError:
    code = message = None
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
    text = f"{provider} response {response_id} failed: {message or 'no reason given'}"
    if code in _RETRYABLE_CODES or not isinstance(code, str):
        return ProviderRetryableError(text, code="failed")
    return ProviderError(text, code=code)


def _completion(provider: str, response: Mapping[str, Any]) -> Completion:
    output = response.get("output")
    if not isinstance(output, list):
        raise malformed(provider, "a finished response without output")
    parts: list[str] = []
    for item in output:
        if not isinstance(item, dict) or item.get("type") != "message":
            continue  # reasoning summaries and tool calls carry no answer text
        content = item.get("content")
        if not isinstance(content, list):
            raise malformed(provider, "a message without content")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            # A refusal carries its explanation instead of text; surface it as the text.
            text = part.get("text" if kind == "output_text" else "refusal") if kind else None
            if kind in ("output_text", "refusal"):
                if not isinstance(text, str):
                    raise malformed(provider, "message content is not text")
                parts.append(text)
    usage = response.get("usage")
    input_tokens = usage.get("input_tokens") if isinstance(usage, dict) else None
    output_tokens = usage.get("output_tokens") if isinstance(usage, dict) else None
    if not is_count(input_tokens) or not is_count(output_tokens):
        raise malformed(provider, "no token usage")
    return Completion(text="".join(parts), input_tokens=input_tokens, output_tokens=output_tokens)


def is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
