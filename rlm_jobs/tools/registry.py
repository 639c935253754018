"""What the user registered as tools, checked once, and what runs them.

Two ways in, one shape (the reference's ``custom_tools``): a mapping name -> function, or
name -> ``{"tool": function, "description": "...", "timeout_s": 5}``; or a module name
(``RLM_JOBS_TOOLS=mypkg.tools``): its ``TOOLS`` mapping if it has one, else every public
function defined in the module itself. Each tool must be callable, under a name the REPL
can bind that shadows nothing the model relies on. Data values (which the reference also
takes) are refused: data belongs in the context.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import keyword
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError, ToolError
from rlm_jobs.tools.runner import ToolRunner
from sandbox.records import ToolSpec
from sandbox.repl import RESERVED
from sandbox.wire import MAX_TOOLS

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
# context_0, context_1, ...: the contexts of a session's questions.
_CONTEXT_N = re.compile(r"^context_\d+$")
_ENTRY_KEYS = {"tool", "description", "timeout_s"}
# What the prompt and the sandbox show of a docstring and a signature (ToolSpec's bounds).
MAX_DOC_CHARS = 8_000
MAX_SIGNATURE_CHARS = 2_000


@dataclass(frozen=True)
class Tool:
    name: str
    function: Callable[..., Any]
    doc: str
    signature: str
    # None: the deployment's tool_timeout_s.
    timeout_s: float | None = None

    @classmethod
    def of(
        cls,
        name: str,
        function: Any,
        *,
        description: str | None = None,
        timeout_s: float | None = None,
    ) -> Tool:
        _check_name(name)
        if not callable(function):
            raise ConfigError(
                f"custom tool {name!r} is a {type(function).__name__}, not a function: tools "
                "run on the host when the REPL calls them; pass data in the context instead"
            )
        if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ConfigError(f"custom tool {name!r}: timeout_s must be a positive number")
        doc = description if description is not None else inspect.getdoc(function) or ""
        return cls(
            name=name,
            function=function,
            doc=_cut(inspect.cleandoc(doc), MAX_DOC_CHARS),
            signature=_cut(_signature_text(function), MAX_SIGNATURE_CHARS),
            timeout_s=None if timeout_s is None else float(timeout_s),
        )

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, signature=self.signature, doc=self.doc)

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """ToolError unless the function takes these arguments (checked before it runs)."""
        try:
            signature = inspect.signature(self.function)
        except (TypeError, ValueError):  # some builtins have none: the call itself will tell
            return
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ToolError(f"{self.name}{self.signature}: {exc}") from None


class ToolSet:
    """The registered tools, by name, in the order they were given."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ConfigError(f"custom tool {tool.name!r} is registered twice")
            self._tools[tool.name] = tool
        if len(self._tools) > MAX_TOOLS:
            raise ConfigError(
                f"{len(self._tools)} custom tools is more than the {MAX_TOOLS} a REPL takes"
            )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ToolSet:
        """The reference's ``custom_tools``: name -> function, or name -> {"tool": ...}."""
        if not isinstance(mapping, Mapping):
            raise ConfigError("custom_tools must be a dict of name -> function")
        return cls(_entry(name, value) for name, value in mapping.items())

    @classmethod
    def from_module(cls, module_name: str) -> ToolSet:
        """The module's ``TOOLS`` mapping, else every public function it defines."""
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # any import-time failure of the user's module
            raise ConfigError(
                f"cannot import the tools module {module_name!r} (RLM_JOBS_TOOLS): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        declared = getattr(module, "TOOLS", None)
        if declared is not None:
            return cls.from_mapping(declared)
        functions = [
            (name, value)
            for name, value in vars(module).items()
            if inspect.isfunction(value)
            and value.__module__ == module.__name__
            and not name.startswith("_")
        ]
        if not functions:
            raise ConfigError(
                f"the tools module {module_name!r} defines no public function and no TOOLS"
            )
        return cls(Tool.of(name, function) for name, function in functions)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    @property
    def specs(self) -> list[ToolSpec]:
        return [tool.spec() for tool in self._tools.values()]

    def __len__(self) -> int:
        return len(self._tools)


@dataclass(frozen=True)
class Toolbox:
    """The tools of a process and what runs them; built once, shared by its jobs."""

    tools: ToolSet
    runner: ToolRunner
    timeout_s: float
    max_json_bytes: int

    @classmethod
    def build(cls, tools: ToolSet, settings: Settings) -> Toolbox:
        return cls(
            tools=tools,
            runner=ToolRunner(settings.tool_concurrency),
            timeout_s=settings.tool_timeout_s,
            max_json_bytes=settings.tool_max_json_bytes,
        )

    @property
    def specs(self) -> list[ToolSpec]:
        return self.tools.specs

    def timeout_for(self, tool: Tool) -> float:
        return tool.timeout_s if tool.timeout_s is not None else self.timeout_s


def _entry(name: Any, value: Any) -> Tool:
    if not isinstance(name, str):
        raise ConfigError(f"custom tool names are strings, not {type(name).__name__}")
    if isinstance(value, Mapping):
        extra = sorted(set(value) - _ENTRY_KEYS)
        if "tool" not in value or extra:
            raise ConfigError(
                f"custom tool {name!r}: a dict entry takes 'tool' (the function) and "
                f"optionally 'description' and 'timeout_s'"
                + (f", not {extra[0]!r}" if extra else "")
            )
        description = value.get("description")
        if description is not None and not isinstance(description, str):
            raise ConfigError(f"custom tool {name!r}: its description must be a string")
        return Tool.of(
            name, value["tool"], description=description, timeout_s=value.get("timeout_s")
        )
    return Tool.of(name, value)


def _check_name(name: str) -> None:
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise ConfigError(
            f"custom tool name {name!r} is not a Python identifier of at most 64 characters "
            "starting with a letter"
        )
    if name in RESERVED or _CONTEXT_N.match(name) or name == "ToolError":
        raise ConfigError(f"custom tool name {name!r} is one of the REPL's own names")
    if hasattr(builtins, name):
        raise ConfigError(f"custom tool name {name!r} would hide the Python builtin {name}()")


def _signature_text(function: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(function, eval_str=True))
    except Exception:  # unresolvable annotations: show them as written
        try:
            return str(inspect.signature(function))
        except (TypeError, ValueError):
            return "(...)"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 4] + " ..."
