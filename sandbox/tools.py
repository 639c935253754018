"""The host's tools as the REPL sees them: names that send a ``ToolRequest`` and wait.

A tool runs on the host, never here: calling its name encodes the arguments as JSON (a
value JSON cannot carry is refused in the cell, before anything is sent), sends them over
the wire like a sub-call and waits for the answer. A result comes back as the JSON value
the tool returned; a tool that raised, ran past its time limit or was given arguments it
does not take raises ``ToolError`` in the cell with the host's message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from sandbox.records import SubcallResult, ToolSpec, WireError
from sandbox.wire import ToolRequest, new_id


class ToolError(Exception):
    """A host-side tool failed: it raised, timed out, or refused its arguments."""


# Tracebacks name it as the model knows it (bound in the REPL), not by its module.
ToolError.__module__ = "builtins"


class ToolClient(Protocol):
    """What a tool name needs from the runtime's request client (``SubcallClient``)."""

    def next_seq(self) -> int: ...

    def exchange(self, request: ToolRequest) -> list[SubcallResult]: ...


def make_tools(client: ToolClient, specs: list[ToolSpec]) -> dict[str, Any]:
    """One function per tool, named and documented as the host described it, and
    ``ToolError`` for model code to catch (none of it without tools)."""
    if not specs:
        return {}
    return {"ToolError": ToolError, **{spec.name: _tool_function(client, spec) for spec in specs}}


def _tool_function(client: ToolClient, spec: ToolSpec) -> Callable[..., Any]:
    name = spec.name

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            arguments = json.dumps(
                {"args": list(args), "kwargs": kwargs}, allow_nan=False, separators=(",", ":")
            )
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(
                f"{name}() takes JSON values only (str, int, float, bool, None, lists, dicts "
                f"with str keys): {exc}"
            ) from None
        request = ToolRequest(seq=client.next_seq(), id=new_id(), name=name, arguments=arguments)
        try:
            results = client.exchange(request)
        except WireError as exc:
            raise ValueError(f"{name}(): {exc}: pass smaller arguments") from None
        if not results:
            raise ToolError(f"{name}: the orchestrator sent no answer")
        result = results[0]
        if not result.ok:
            raise ToolError(result.text)
        try:
            return json.loads(result.text)
        except ValueError:
            raise ToolError(f"{name}: the orchestrator's answer is not JSON") from None

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{name}{spec.signature}\n\n{spec.doc}".rstrip()
    return call
