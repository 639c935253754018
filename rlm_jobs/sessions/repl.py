"""One REPL kept across the jobs of a session, and the conversation they add up to.

The REPL is opened once, for the session's first job, with relays for a handler: each job
binds its own sub-call and tool handlers while it runs, so the sandbox never needs to know
that its jobs change. A later job gives it that job's context (``load_context``: bound as
``context`` and ``context_<index>``, the variables kept). Library mode keeps one
``SessionRepl`` per ``RLM(persistent=True)``; the service builds one per session job and
fills it by replaying the session's earlier jobs (``rlm_jobs.sessions.runner``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.errors import SandboxError
from rlm_jobs.models import ContextRef, JobResult, JobStatus
from rlm_jobs.sandboxes.base import (
    ContextLoadingRepl,
    Repl,
    ReplFactory,
    SubcallHandler,
    ToolHandler,
)
from sandbox.records import SubcallResult, ToolSpec, not_run
from sandbox.wire import SubcallRequest, ToolRequest

_IDLE = "no job of this session is running"


class _SubcallRelay:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: SubcallHandler | None = None

    def bind(self, target: SubcallHandler | None) -> None:
        with self._lock:
            self._target = target

    def __call__(self, request: SubcallRequest) -> list[SubcallResult]:
        with self._lock:
            target = self._target
        return target(request) if target else [not_run(_IDLE)] * len(request.prompts)


class _ToolRelay:
    def __init__(self, specs: Sequence[ToolSpec]) -> None:
        self._lock = threading.Lock()
        self._target: ToolHandler | None = None
        self._specs = list(specs)

    @property
    def specs(self) -> list[ToolSpec]:
        return self._specs

    def bind(self, target: ToolHandler | None) -> None:
        with self._lock:
            self._target = target

    def __call__(self, request: ToolRequest) -> SubcallResult:
        with self._lock:
            target = self._target
        return target(request) if target else not_run(_IDLE)


def conversation_of(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """What a job adds to its session's conversation: its messages up to its last reply
    (a job cut short after a cell has its feedback last; the next question follows a reply)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    return list(messages[: last + 1])


class SessionRepl:
    """The REPL and conversation of one session, lent to one job at a time."""

    def __init__(self, factory: ReplFactory, tool_specs: Sequence[ToolSpec] = ()) -> None:
        self._factory = factory
        self._subcalls = _SubcallRelay()
        self._tools = _ToolRelay(tool_specs) if tool_specs else None
        self._repl: Repl | None = None
        # The next job's position in the session (0: its first), the conversation so far,
        # the last answer (if that job completed), and what to tell the next job about how
        # its state was rebuilt.
        self.index = 0
        self.messages: list[ChatMessage] = []
        self.previous_answer: str | None = None
        self.rebuilt: str | None = None
        # Earlier jobs replayed from their journals to rebuild this state (the service's).
        self.replayed = 0

    def open_repl(
        self,
        context: ContextRef,
        handler: SubcallHandler,
        *,
        seed: int,
        tools: ToolHandler | None,
    ) -> Repl:
        """The session's REPL holding ``context`` (as ``context_<index>`` too), its calls
        going to this job's handlers until ``release``."""
        self._subcalls.bind(handler)
        if self._tools is not None:
            self._tools.bind(tools)
        if self._repl is None:
            self._repl = self._factory(context, self._subcalls, seed=seed, tools=self._tools)
        elif isinstance(self._repl, ContextLoadingRepl):
            self._repl.load_context(context, index=self.index, seed=seed)
        else:
            raise SandboxError("this session's REPL cannot take another context")
        return self._repl

    def release(self) -> None:
        """The job is over: its handlers no longer answer the REPL."""
        self._subcalls.bind(None)
        if self._tools is not None:
            self._tools.bind(None)

    def finished(self, messages: Sequence[ChatMessage], result: JobResult) -> None:
        """The job ended with ``result`` after ``messages``: the next one continues it."""
        self.messages = conversation_of(messages)
        completed = result.status is JobStatus.COMPLETED
        self.previous_answer = result.answer if completed else None
        self.index += 1
        self.rebuilt = None

    def close(self) -> None:
        self.release()
        repl, self._repl = self._repl, None
        if repl is not None:
            repl.close()
