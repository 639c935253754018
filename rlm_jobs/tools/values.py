"""The JSON boundary of a tool call: what hostile code may send, and what a tool may return.

Arguments arrive as JSON text from the sandbox; they are parsed only if they fit
``max_bytes``, must be ``{"args": [...], "kwargs": {...}}`` and come out as plain JSON
values (str, int, float, bool, None, lists, dicts). A result must be JSON too, no larger
than ``max_bytes``, with no NaN or infinity (strict JSON parsers reject them).
"""

from __future__ import annotations

import json
from typing import Any

from rlm_jobs.errors import ToolError

# A tool's error message as the cell sees it: a sentence, not a dump.
MAX_ERROR_CHARS = 2_000


def parse_arguments(text: str, name: str, max_bytes: int) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments in ``text``; ToolError when they are not usable."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ToolError(
            f"{name}: its arguments are {size:,} bytes of JSON, more than the {max_bytes:,} "
            "a tool call may carry (tool_max_json_bytes); pass data through `context` instead"
        )
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, or a huge integer
        raise ToolError(f"{name}: its arguments are not JSON: {_short(exc)}") from None
    if not isinstance(data, dict) or set(data) != {"args", "kwargs"}:
        raise ToolError(f"{name}: malformed call (expected {{'args': [...], 'kwargs': {{...}}}})")
    args, kwargs = data["args"], data["kwargs"]
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ToolError(f"{name}: malformed call (args must be a list, kwargs a dict)")
    return args, kwargs


def encode_result(value: Any, name: str, max_bytes: int) -> str:
    """The result as JSON text; ToolError when it is not JSON or too large."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ToolError(
            f"{name} returned a value that is not JSON ({type(value).__name__}): {_short(exc)}"
        ) from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ToolError(
            f"{name} returned {size:,} bytes of JSON, more than the {max_bytes:,} a tool "
            "result may have (tool_max_json_bytes)"
        )
    return text


def describe_exception(name: str, exc: BaseException) -> str:
    """What the cell is told when a tool raised: the tool, the type and the message."""
    return _short(f"{name} raised {type(exc).__name__}: {exc}")


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " ..."
