"""Host-side sandbox protocols: what the loop needs from a REPL, what a backend provides.

A *backend* only starts and stops the isolated runtime process (a local process, a
container). Talking to the runtime over Redis is the same for every backend and lives in
``rlm_jobs.sandboxes.session``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from rlm_jobs.models import ContextRef
from sandbox.records import CellResult, SubcallResult, ToolSpec
from sandbox.wire import Bootstrap, SubcallRequest, ToolRequest

# Answers one llm_query/rlm_query request of a sandbox, one result per prompt, in order.
# Called from a helper thread; may be called concurrently.
SubcallHandler = Callable[[SubcallRequest], list[SubcallResult]]


class ToolHandler(Protocol):
    """The host's tools for one REPL: what the sandbox is told, and who answers its calls.

    ``__call__`` is called from a helper thread, maybe concurrently; its result's ``text``
    is the tool's result as JSON when ``ok``, else the error the cell raises.
    """

    @property
    def specs(self) -> Sequence[ToolSpec]: ...

    def __call__(self, request: ToolRequest) -> SubcallResult: ...


class Repl(Protocol):
    """A live REPL with a persistent namespace holding ``context`` and the RLM names."""

    def run_cell(self, code: str, *, timeout_s: float, max_output_chars: int) -> CellResult: ...

    def close(self) -> None: ...


@runtime_checkable
class ContextLoadingRepl(Repl, Protocol):
    """A REPL that takes another context while keeping its variables (a session's next
    question): bound as ``context`` and ``context_<index>``, ``random`` seeded again."""

    def load_context(self, context: ContextRef, *, index: int, seed: int) -> None: ...


class ReplFactory(Protocol):
    """Opens a REPL over a stored context whose sub-calls go to the handler, and whose
    tool calls (if it has tools) go to ``tools``.

    ``seed`` seeds ``random`` in the REPL before its first cell, so a job run again with
    the same seed draws the same numbers (``sandbox.determinism``).
    """

    def __call__(
        self,
        context: ContextRef,
        handler: SubcallHandler,
        *,
        seed: int = 0,
        tools: ToolHandler | None = None,
    ) -> Repl: ...


class SandboxProcess(Protocol):
    """A started runtime: process, container, ..."""

    def alive(self) -> bool: ...

    def kill(self) -> None:
        """Stop it now and release everything it held; safe to call twice."""

    def describe_exit(self) -> str:
        """How it ended (exit code, signal, OOM), for error messages."""


class SandboxBackend(Protocol):
    name: str

    def launch(self, bootstrap: Bootstrap) -> SandboxProcess: ...
