"""The records both sides share: one type per concept, checked when built and when decoded.

``CellResult`` is what one cell did: the REPL makes it, the wire carries it, the host's
session and the loop read it. ``SubcallResult`` is one prompt's answer: dispatchers and
llm workers make it, the sandbox receives its ``ok``/``text``. ``not_run`` is the one way to
say a prompt was never sent to a model. ``ToolSpec`` names a host-side tool the sandbox
may call (its answer is a ``SubcallResult`` too: ``ok``, and the JSON result or the error).

``Record`` is a frozen, keyword-only record whose fields are checked against their
annotations: exact field sets, exact JSON types, bounds. Stdlib only, and not built on
``dataclasses``: the sandbox imports this at every start, the runtime's start-up cost is
mostly imports, and ``dataclasses`` (with ``inspect``) and its generated classes cost more
than the checks themselves. Each class's checks, conversions and dumps are worked out once,
on first use (``_plan``), because a reply round builds and decodes several records.
"""

from __future__ import annotations

import json
import math
import operator
import reprlib
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar, Union


class WireError(ValueError):
    """A record or message that is not valid JSON or does not match its schema."""


R = TypeVar("R", bound="Record")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


_MISSING: Any = _Missing()


class _Field:
    """What ``field()`` returns: a default and bounds, read once by ``_plan``."""

    __slots__ = ("default", "factory", "limits")

    def __init__(self, default: Any, factory: Callable[[], Any] | None, limits: dict[str, float]):
        self.default = default
        self.factory = factory
        self.limits = limits


def field(
    *,
    default: Any = _MISSING,
    default_factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    min_len: int | None = None,
    max_len: int | None = None,
) -> Any:
    """A field with a default (or a factory for one) and bounds: ge/gt/le for numbers,
    min_len/max_len for strings and lists."""
    given = {"ge": ge, "gt": gt, "le": le, "min_len": min_len, "max_len": max_len}
    return _Field(default, default_factory, {k: v for k, v in given.items() if v is not None})


@typing.dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
class Record:
    """A frozen record built from keyword arguments, each checked against its annotation.

    Fields are the class's annotations (``ClassVar`` ones excepted), a subclass's after its
    base's; a field's default is its class attribute, or a ``field()``.
    """

    def __init__(self, **values: Any) -> None:
        plan = _plan(type(self))
        own = self.__dict__
        for spec in plan.fields:
            name = spec.name
            if name in values:
                value = values.pop(name)
            elif spec.factory is not None:
                value = spec.factory()
            elif spec.default is not _MISSING:
                value = spec.default
            else:
                raise TypeError(f"{type(self).__name__}: missing required field {name!r}")
            spec.check(value, name)
            own[name] = value
        if values:
            raise TypeError(f"{type(self).__name__}: unexpected field {next(iter(values))!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.__dict__.values())))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.__dict__.items())
        return f"{type(self).__name__}({shown})"

    def replace(self: R, **changes: Any) -> R:
        """A copy with ``changes``, checked like any new record."""
        return type(self)(**{**self.__dict__, **changes})

    @classmethod
    def from_dict(cls: type[R], data: Any) -> R:
        if not isinstance(data, dict):
            raise WireError(f"{cls.__name__} must be a JSON object")
        plan = _plan(cls)
        values = {}
        for name, value in data.items():
            spec = plan.by_name.get(name)
            if spec is None:
                raise WireError(f"{cls.__name__}: unexpected field {reprlib.repr(name)}")
            values[name] = value if spec.convert is None else spec.convert(value)
        try:
            return cls(**values)
        except TypeError as exc:  # a required field is missing
            raise WireError(str(exc)) from exc

    @classmethod
    def from_json(cls: type[R], raw: str | bytes | bytearray) -> R:
        return cls.from_dict(loads(raw))

    def to_dict(self) -> dict[str, Any]:
        own = self.__dict__
        return {
            spec.name: own[spec.name] if spec.dump is None else spec.dump(own[spec.name])
            for spec in _plan(type(self)).fields
        }

    def to_json(self) -> str:
        # ASCII escapes: model output may hold lone surrogates, which cannot be encoded as UTF-8.
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


# ---- the shared records -----------------------------------------------------------------


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


class ToolSpec(Record):
    """A host-side tool as the sandbox knows it: the name it binds, and what ``help()`` shows.

    The tool itself never enters the sandbox; calling the name sends a ``ToolRequest``.
    """

    name: str = field(min_len=1, max_len=64)
    signature: str = field(default="(...)", max_len=2_000)
    doc: str = field(default="", max_len=8_000)


# How the text of a call that was never made begins.
NOT_RUN_PREFIX = "Error: not run: "


def not_run(reason: str) -> SubcallResult:
    """The result of a prompt that was never sent to a model (the job stopped first)."""
    return SubcallResult(ok=False, text=f"{NOT_RUN_PREFIX}{reason}")


# ---- plans: each class's checks, conversions and dumps, worked out once -----------------

Check = Callable[[Any, str], None]
Convert = Callable[[Any], Any]


class _Spec:
    __slots__ = ("check", "convert", "default", "dump", "factory", "name")

    def __init__(self, name: str, hint: Any, declared: Any) -> None:
        self.name = name
        self.default, self.factory, limits = _MISSING, None, {}
        if isinstance(declared, _Field):
            self.default, self.factory, limits = declared.default, declared.factory, declared.limits
        elif declared is not _MISSING:
            self.default = declared
        self.check = _checker(hint, limits)
        self.convert = _converter(hint)
        self.dump = _dumper(hint)


class _Plan:
    __slots__ = ("by_name", "fields")

    def __init__(self, fields: list[_Spec]) -> None:
        self.fields = fields
        self.by_name = {spec.name: spec for spec in fields}


_plans: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    plan = _plans.get(cls)
    if plan is None:
        plan = _plans[cls] = _build_plan(cls)
    return plan


def _build_plan(cls: type) -> _Plan:
    hints = typing.get_type_hints(cls)
    bases = [b for b in cls.__mro__[1:] if issubclass(b, Record) and b is not Record]
    fields = list(_plan(bases[0]).fields) if bases else []
    # Since 3.10 a class's __annotations__ are its own, never a base's.
    for name in cls.__annotations__:
        hint = hints[name]
        if typing.get_origin(hint) is ClassVar or hint is ClassVar:
            continue
        spec = _Spec(name, hint, cls.__dict__.get(name, _MISSING))
        fields = [f for f in fields if f.name != name] + [spec]
    return _Plan(fields)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _checker(hint: Any, limits: dict[str, float]) -> Check:
    """A function raising WireError unless its value is exactly of type ``hint``, in bounds."""
    inner = _optional_inner(hint)
    if inner is not None:
        inner_check = _checker(inner, limits)

        def check_optional(value: Any, name: str) -> None:
            if value is not None:
                inner_check(value, name)

        return check_optional
    if typing.get_origin(hint) is Literal:
        options = typing.get_args(hint)

        def check_literal(value: Any, name: str) -> None:
            if value not in options:
                raise WireError(f"{name}: {reprlib.repr(value)} is not one of {list(options)}")

        return check_literal
    check = _type_checker(hint)
    in_bounds = _bounds_checker(limits)
    if in_bounds is None:
        return check

    def check_bounded(value: Any, name: str) -> None:
        check(value, name)
        in_bounds(value, name)

    return check_bounded


def _instance_checker(
    accepted: type | tuple[type, ...], what: str, *, bool_too: bool = True
) -> Check:
    """A check that a value is an instance of ``accepted`` (``bool_too=False``: and not a
    bool, which JSON and Python both count as an integer otherwise)."""

    def check(value: Any, name: str) -> None:
        if not isinstance(value, accepted) or (not bool_too and isinstance(value, bool)):
            raise WireError(f"{name}: expected {what}, got {_type_name(value)}")

    return check


def _type_checker(hint: Any) -> Check:
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        check_item = _checker(item, {})

        def check_list(value: Any, name: str) -> None:
            if not isinstance(value, list):
                raise WireError(f"{name}: expected a list, got {_type_name(value)}")
            for i, element in enumerate(value):
                try:
                    check_item(element, "")
                except WireError as exc:  # the index only once something is wrong
                    raise WireError(f"{name}[{i}]{exc}") from None

        return check_list
    if hint is bool:
        return _instance_checker(bool, "a boolean")
    if hint is int:
        return _instance_checker(int, "an integer", bool_too=False)
    if hint is float:
        check_number = _instance_checker((int, float), "a number", bool_too=False)

        def check_float(value: Any, name: str) -> None:
            check_number(value, name)
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an integer too big for a float
                finite = False
            if not finite:
                raise WireError(f"{name}: expected a finite number")

        return check_float
    if hint is str:
        return _instance_checker(str, "a string")
    if isinstance(hint, type) and issubclass(hint, Record):
        return _instance_checker(hint, hint.__name__)
    raise TypeError(f"unsupported annotation {hint!r}")  # a schema bug, not bad input


# Each bound: how a value (or its length) must compare with it, and what a failure says.
_BOUNDS: dict[str, tuple[Callable[[Any, Any], bool], bool, str]] = {
    "ge": (operator.ge, False, "must be >= {:g}"),
    "gt": (operator.gt, False, "must be > {:g}"),
    "le": (operator.le, False, "must be <= {:g}"),
    "min_len": (operator.ge, True, "must have at least {:g} items or characters"),
    "max_len": (operator.le, True, "must have at most {:g} items or characters"),
}


def _bounds_checker(limits: dict[str, float]) -> Check | None:
    tests = [
        (compare, of_length, bound, failure.format(bound))
        for kind, bound in limits.items()
        for compare, of_length, failure in [_BOUNDS[kind]]
    ]
    if not tests:
        return None

    def check_bounds(value: Any, name: str) -> None:
        for compare, of_length, bound, failure in tests:
            if not compare(len(value) if of_length else value, bound):
                raise WireError(f"{name}: {failure}")

    return check_bounds


def _optional_inner(hint: Any) -> Any:
    """The type inside ``X | None``; None when ``hint`` is not optional."""
    if typing.get_origin(hint) not in (Union, types.UnionType):
        return None
    (inner,) = [o for o in typing.get_args(hint) if o is not type(None)]
    return inner


def _mapper(hint: Any, leaf: Callable[[Any], Convert | None], copy_lists: bool) -> Convert | None:
    """A function applying ``leaf(type)``'s function through optionals and lists; None
    where it would change nothing (a list is still copied when ``copy_lists``)."""
    inner = _optional_inner(hint)
    if inner is not None:
        apply = _mapper(inner, leaf, copy_lists)
        if apply is None:
            return None
        return lambda value: value if value is None else apply(value)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        apply_item = _mapper(item, leaf, copy_lists)
        if apply_item is None:
            return list if copy_lists else None
        return lambda value: [apply_item(v) for v in value] if isinstance(value, list) else value
    return leaf(hint)


def _convert_leaf(hint: Any) -> Convert | None:
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict
    if hint is str:
        return lambda value: (
            _without_lone_surrogates(value)
            if isinstance(value, str) and not value.isascii()
            else value
        )
    return None


def _dump_leaf(hint: Any) -> Convert | None:
    if isinstance(hint, type) and issubclass(hint, Record):
        return lambda value: value.to_dict()
    return None


def _converter(hint: Any) -> Convert | None:
    """JSON values to field values (nested records built from their objects); None: as is."""
    return _mapper(hint, _convert_leaf, copy_lists=False)


def _dumper(hint: Any) -> Convert | None:
    """Field values to JSON values; None: as is (a list is copied)."""
    return _mapper(hint, _dump_leaf, copy_lists=True)


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
