"""The records both sides share: one type per concept, checked when built and when decoded.

``CellResult`` is what one cell did: the REPL makes it, the wire carries it, the host's
session and the loop read it. ``SubcallResult`` is one prompt's answer: dispatchers and
llm workers make it, the sandbox receives its ``ok``/``text``. ``not_run`` is the one way to
say a prompt was never sent to a model. ``ToolSpec`` names a host-side tool the sandbox
may call (its answer is a ``SubcallResult`` too: ``ok``, and the JSON result or the error).

``Record`` is a frozen dataclass whose fields are checked against their annotations: exact
field sets, exact JSON types, bounds. Stdlib only: the sandbox imports this at every
start, and the runtime's start-up cost is mostly imports.
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union


class WireError(ValueError):
    """A record or message that is not valid JSON or does not match its schema."""


R = TypeVar("R", bound="Record")


def bounds(**limits: float) -> Any:
    """Field metadata: ge/gt for numbers, min_len/max_len for strings and lists."""
    return {"bounds": limits}


@dataclass(frozen=True, kw_only=True)
class Record:
    """A frozen dataclass whose fields are checked against their annotations when built."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            _check(getattr(self, f.name), hints[f.name], f.name, f.metadata.get("bounds", {}))

    @classmethod
    def from_dict(cls: type[R], data: Any) -> R:
        if not isinstance(data, dict):
            raise WireError(f"{cls.__name__} must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - names)
        if extra:
            raise WireError(f"{cls.__name__}: unexpected field {reprlib.repr(extra[0])}")
        hints = _hints(cls)
        values = {name: _convert(value, hints[name]) for name, value in data.items()}
        try:
            return cls(**values)
        except TypeError as exc:  # a required field is missing
            raise WireError(f"{cls.__name__}: {exc}") from exc

    @classmethod
    def from_json(cls: type[R], raw: str | bytes | bytearray) -> R:
        return cls.from_dict(loads(raw))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        # ASCII escapes: model output may hold lone surrogates, which cannot be encoded as UTF-8.
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


# ---- the shared records -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CellResult(Record):
    """What one cell did."""

    stdout: str
    stderr: str
    error: str | None = None
    final: str | None = None
    # answer["content"] after the cell, even when not ready: the job's best partial answer.
    partial: str | None = None
    timed_out: bool = False
    duration_s: float = 0.0
    # Facts only the host knows, set by its session (whatever a sandbox sends is replaced):
    # the runtime died or was killed and a fresh one (empty namespace) now serves the job,
    # and notes for the model about what the host saw.
    sandbox_replaced: bool = False
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class SubcallResult(Record):
    """The answer to one llm_query/rlm_query prompt, with what it cost."""

    ok: bool
    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    # Which worker served it ("" in process): shows how a batch spread over the pool.
    worker: str = ""
    # Answered from the response cache (cost 0; ``cached_cost_usd`` is what it saved).
    cached: bool = False
    cached_cost_usd: float = 0.0
    # Seconds it waited for rate-limit slots.
    rate_limited_s: float = 0.0
    # Set when the call was refused because its job must stop: the status it ends with
    # (a spent batch budget: "BUDGET_EXCEEDED"). Host side only.
    refusal: str = ""


@dataclass(frozen=True, kw_only=True)
class ToolSpec(Record):
    """A host-side tool as the sandbox knows it: the name it binds, and what ``help()`` shows.

    The tool itself never enters the sandbox; calling the name sends a ``ToolRequest``.
    """

    name: str = dataclasses.field(metadata=bounds(min_len=1, max_len=64))
    signature: str = dataclasses.field(default="(...)", metadata=bounds(max_len=2_000))
    doc: str = dataclasses.field(default="", metadata=bounds(max_len=8_000))


# How the text of a call that was never made begins.
NOT_RUN_PREFIX = "Error: not run: "


def not_run(reason: str) -> SubcallResult:
    """The result of a prompt that was never sent to a model (the job stopped first)."""
    return SubcallResult(ok=False, text=f"{NOT_RUN_PREFIX}{reason}")


# ---- checking ---------------------------------------------------------------------------

_hint_cache: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _hint_cache.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _hint_cache[cls] = hints
    return hints


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check(value: Any, hint: Any, name: str, limits: dict[str, float]) -> None:
    """Raise WireError unless ``value`` is exactly of type ``hint`` and within ``limits``."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return
        (inner,) = [o for o in options if o is not type(None)]
        _check(value, inner, name, limits)
        return
    if origin is Literal:
        if value not in typing.get_args(hint):
            shown = reprlib.repr(value)
            raise WireError(f"{name}: {shown} is not one of {list(typing.get_args(hint))}")
        return
    if origin is list:
        if not isinstance(value, list):
            raise WireError(f"{name}: expected a list, got {_type_name(value)}")
        (item,) = typing.get_args(hint)
        for i, element in enumerate(value):
            _check(element, item, f"{name}[{i}]", {})
    elif hint is bool:
        if not isinstance(value, bool):
            raise WireError(f"{name}: expected a boolean, got {_type_name(value)}")
    elif hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise WireError(f"{name}: expected an integer, got {_type_name(value)}")
    elif hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise WireError(f"{name}: expected a number, got {_type_name(value)}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer too big for a float
            finite = False
        if not finite:
            raise WireError(f"{name}: expected a finite number")
    elif hint is str:
        if not isinstance(value, str):
            raise WireError(f"{name}: expected a string, got {_type_name(value)}")
    elif isinstance(hint, type) and issubclass(hint, Record):
        if not isinstance(value, hint):
            raise WireError(f"{name}: expected {hint.__name__}, got {_type_name(value)}")
    else:  # pragma: no cover - a schema bug, not bad input
        raise TypeError(f"{name}: unsupported annotation {hint!r}")
    _check_bounds(value, name, limits)


def _check_bounds(value: Any, name: str, limits: dict[str, float]) -> None:
    if "ge" in limits and value < limits["ge"]:
        raise WireError(f"{name}: must be >= {limits['ge']:g}")
    if "gt" in limits and value <= limits["gt"]:
        raise WireError(f"{name}: must be > {limits['gt']:g}")
    if "le" in limits and value > limits["le"]:
        raise WireError(f"{name}: must be <= {limits['le']:g}")
    if "min_len" in limits and len(value) < limits["min_len"]:
        raise WireError(f"{name}: must have at least {limits['min_len']:g} items or characters")
    if "max_len" in limits and len(value) > limits["max_len"]:
        raise WireError(f"{name}: must have at most {limits['max_len']:g} items or characters")


def _convert(value: Any, hint: Any) -> Any:
    """JSON values to field values: nested records are built from their objects."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [o for o in typing.get_args(hint) if o is not type(None)]
        return value if value is None else _convert(value, inner[0])
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(hint)
        return [_convert(element, item) for element in value]
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value)
    if hint is str and isinstance(value, str) and not value.isascii():
        return _without_lone_surrogates(value)
    return value


def _without_lone_surrogates(text: str) -> str:
    """JSON may carry lone surrogates (``"\\ud800"``); nothing downstream can encode them."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def loads(raw: str | bytes | bytearray) -> Any:
    """JSON to Python, with every decoding failure a WireError."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise WireError(f"message is not JSON: {exc}") from exc
