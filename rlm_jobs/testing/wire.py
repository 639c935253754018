"""The wire formats the scripted provider speaks, close enough for the official SDKs.

OpenAI chat completions, OpenAI responses (background mode included) and Anthropic
messages: request parsing, success bodies with ids, usage, finish/stop reasons and the
model echoed back, and each provider's error shape.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from rlm_jobs.clients.base import ChatMessage

Wire = Literal["openai", "responses", "anthropic"]
_ROLES = ("system", "user", "assistant")
# The Responses API refuses smaller caps.
MIN_OUTPUT_TOKENS = 16


class WireError(ValueError):
    """A request the real API would reject with 400."""


def count_tokens(text: str) -> int:
    """The scripted tokenizer: one token per four characters, rounded up."""
    return -(-len(text) // 4)


def input_tokens(messages: list[ChatMessage]) -> int:
    return count_tokens("".join(m["content"] for m in messages))


@dataclass(frozen=True)
class ChatRequest:
    wire: Wire
    model: str
    messages: list[ChatMessage]
    max_tokens: int | None
    # Responses API only: generated after the reply, fetched by id (``response_object``).
    background: bool = False


def _text(content: object, where: str) -> str:
    """Message content as text: a string, or a list of text parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise WireError(f"{where}: only text content is supported")
            parts.append(part["text"])
        return "".join(parts)
    raise WireError(f"{where}: content must be a string or a list of text parts")


def _messages(raw: object, allowed: tuple[str, ...]) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise WireError("messages: a non-empty list is required")
    out: list[ChatMessage] = []
    for i, item in enumerate(raw):
        role = item.get("role") if isinstance(item, dict) else None
        if role not in allowed:
            raise WireError(f"messages.{i}.role: must be one of {', '.join(allowed)}")
        content = _text(item.get("content"), f"messages.{i}.content")
        out.append({"role": role, "content": content})
    return out


def _common(body: object) -> tuple[dict[str, Any], str]:
    if not isinstance(body, dict):
        raise WireError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("model: a model name is required")
    return body, model


def _positive_int(value: object, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise WireError(f"{name}: must be a positive integer")
    return value


def _openai_messages(raw: object) -> list[ChatMessage]:
    messages = _messages(raw, (*_ROLES, "developer"))
    for message in messages:
        if message["role"] not in _ROLES:  # "developer" is OpenAI's newer name for system
            message["role"] = "system"
    return messages


def parse_openai(body: object) -> ChatRequest:
    data, model = _common(body)
    max_tokens = _positive_int(data.get("max_completion_tokens"), "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _positive_int(data.get("max_tokens"), "max_tokens")
    return ChatRequest("openai", model, _openai_messages(data.get("messages")), max_tokens)


def parse_responses(body: object) -> ChatRequest:
    data, model = _common(body)
    max_tokens = _positive_int(data.get("max_output_tokens"), "max_output_tokens")
    if max_tokens is not None and max_tokens < MIN_OUTPUT_TOKENS:
        raise WireError(f"max_output_tokens: must be at least {MIN_OUTPUT_TOKENS}")
    raw = data.get("input")
    messages = _openai_messages([{"role": "user", "content": raw}] if isinstance(raw, str) else raw)
    background = data.get("background", False)
    if not isinstance(background, bool):
        raise WireError("background: must be a boolean")
    if background and data.get("store", True) is not True:
        raise WireError("background: background mode requires store=true")
    return ChatRequest("responses", model, messages, max_tokens, background)


def parse_anthropic(body: object) -> ChatRequest:
    data, model = _common(body)
    max_tokens = _positive_int(data.get("max_tokens"), "max_tokens")
    if max_tokens is None:
        raise WireError("max_tokens: Field required")
    messages = _messages(data.get("messages"), ("user", "assistant"))
    system = data.get("system")
    if system is not None:
        messages.insert(0, {"role": "system", "content": _text(system, "system")})
    return ChatRequest("anthropic", model, messages, max_tokens)


def openai_completion(
    model: str, text: str, prompt_tokens: int, completion_tokens: int, truncated: bool
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "scripted",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "length" if truncated else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def response_object(
    response_id: str,
    model: str,
    status: str,
    *,
    created_at: float,
    background: bool,
    text: str = "",
    input_tokens: int = 0,
    output_tokens: int = 0,
) -> dict[str, Any]:
    """A Responses API object: no output while "queued" or "in_progress"."""
    finished = status in ("completed", "incomplete")
    output = (
        [
            {
                "type": "message",
                "id": f"msg_{response_id.removeprefix('resp_')}",
                "status": status,
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
        if finished
        else []
    )
    usage = (
        {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        if finished
        else None
    )
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created_at),
        "status": status,
        "background": background,
        "model": model,
        "output": output,
        "usage": usage,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
    }


def anthropic_message(
    model: str, text: str, input_tokens: int, output_tokens: int, truncated: bool
) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens" if truncated else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


# status -> (OpenAI error type, OpenAI code, Anthropic error type)
_ERROR_KINDS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "invalid_request_error"),
    401: ("invalid_request_error", "invalid_api_key", "authentication_error"),
    404: ("invalid_request_error", "model_not_found", "not_found_error"),
    429: ("requests", "rate_limit_exceeded", "rate_limit_error"),
    500: ("server_error", None, "api_error"),
}


def error_body(wire: Wire, status: int, message: str) -> dict[str, Any]:
    openai_type, code, anthropic_type = _ERROR_KINDS.get(status, _ERROR_KINDS[500])
    if wire == "anthropic":
        return {"type": "error", "error": {"type": anthropic_type, "message": message}}
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}
