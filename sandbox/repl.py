"""The persistent namespace and how one cell runs in it.

The contract: output is what the cell printed; the value of a cell's last
expression is *not* echoed (the system prompt tells the model to print, and echoing would
print huge values by accident). A cell that raises returns its traceback as ``error`` and
keeps what it assigned before the exception. Reserved names are put back after every cell:
the RLM names, ``context`` and ``context_<n>`` (the contexts of a session's questions, in
order: ``rlm_jobs.sessions``), and the host's tools (``sandbox.tools``).

The wall-clock limit is a SIGALRM timer that raises ``CellTimeout``, a ``BaseException``
so ``except Exception`` in model code does not swallow it; the timer re-fires every
``REFIRE_S`` so even a bare ``except:`` in a loop is interrupted again. A cell that blocks
the signal entirely is the host's problem: it kills and replaces the sandbox.
"""

from __future__ import annotations

import linecache
import signal
import time
import traceback
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from sandbox.capture import BoundedBuffer, Capture
from sandbox.records import CellResult

RESERVED = (
    "context",
    "llm_query",
    "llm_query_batched",
    "rlm_query",
    "rlm_query_batched",
    "SHOW_VARS",
    "FINAL",
    "FINAL_VAR",
    "answer",
)
# After the first interrupt, interrupt again this often until the cell gives up.
REFIRE_S = 0.5


class CellTimeout(BaseException):
    """Raised into model code when its cell runs out of time."""


class Repl:
    def __init__(
        self,
        context: Any,
        subcall_functions: dict[str, Callable[..., Any]],
        *,
        busy: Callable[[], bool] = lambda: False,
        context_index: int = 0,
    ) -> None:
        # True while the main thread is in the middle of something the timer must not cut
        # (a Redis request): the timeout then waits for the next tick, REFIRE_S later.
        self._busy = busy
        self._capture = Capture()
        self._capture.install()
        self._final: str | None = None
        self._in_cell = False
        self._cells = 0
        self._answer: dict[str, Any] = {"content": "", "ready": False}
        self._reserved: dict[str, Any] = {
            "context": context,
            **subcall_functions,
            "SHOW_VARS": self._show_vars,
            "FINAL": self._final_text,
            "FINAL_VAR": self._final_var,
            "answer": self._answer,
        }
        self._tools: list[str] = []
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        self.namespace.update(self._reserved)
        if context is not None:
            self.set_context(context, context_index)

    def set_context(self, context: Any, index: int = 0) -> None:
        """Give the REPL its job's context: a pooled sandbox's first, or a session's next
        question's (the earlier ones stay as ``context_<n>``)."""
        for name in ("context", f"context_{index}"):
            self._reserved[name] = context
            self.namespace[name] = context

    def set_tools(self, tools: dict[str, Any]) -> None:
        """Bind the host's tools (and ``ToolError``), in place of any bound before."""
        for name in self._tools:
            self._reserved.pop(name, None)
            self.namespace.pop(name, None)
        self._tools = [name for name in tools if name not in RESERVED]
        for name in self._tools:
            self._reserved[name] = tools[name]
            self.namespace[name] = tools[name]

    # ---- names the model calls -----------------------------------------------------------

    def _show_vars(self) -> str:
        names = [
            n
            for n in self.namespace
            if not n.startswith("_") and n not in self._reserved and n != "__builtins__"
        ]
        if not names:
            return "No variables defined yet."
        return "\n".join(f"{n}: {_describe(self.namespace[n])}" for n in sorted(names))

    def _final_text(self, text: Any) -> None:
        self._final = text if isinstance(text, str) else str(text)

    def _final_var(self, name: Any) -> str:
        if not isinstance(name, str):
            msg = (
                "Error: FINAL_VAR takes the name of a variable as a string, e.g. "
                'FINAL_VAR("result"); to finish with a value itself, call FINAL(value).'
            )
        else:
            key = name.strip().strip("'\"")
            if key in self.namespace and key != "__builtins__":
                value = self.namespace[key]
                self._final = value if isinstance(value, str) else str(value)
                return self._final
            msg = (
                f"Error: there is no variable named {key!r}, so the job did not finish. "
                "Assign it first, or call FINAL(text)."
            )
        print(msg, file=self._capture.stderr)
        return msg

    # ---- running a cell ------------------------------------------------------------------

    def run(self, code: str, *, timeout_s: float, max_output_chars: int) -> CellResult:
        out, err = BoundedBuffer(max_output_chars), BoundedBuffer(max_output_chars)
        error: str | None = None
        timed_out = False
        self._final = None
        self._cells += 1
        filename = f"<cell {self._cells}>"
        started = time.monotonic()
        self._capture.begin(out, err)
        try:
            try:
                compiled = compile(code, filename, "exec")
            except (SyntaxError, ValueError, OverflowError) as exc:
                error = "".join(traceback.format_exception_only(type(exc), exc))
            else:
                # Lets tracebacks quote the model's lines; mtime None keeps checkcache away.
                linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
                self._arm(timeout_s)
                try:
                    exec(compiled, self.namespace)
                except CellTimeout:
                    timed_out = True
                except BaseException as exc:  # SystemExit and KeyboardInterrupt too
                    error = _format(exc)
                finally:
                    self._disarm()
        except CellTimeout:
            # The timer fired between the end of the cell and disarming it.
            timed_out = True
        finally:
            self._capture.end()
        if timed_out:
            error = (
                f"TimeoutError: the cell ran longer than its {timeout_s:g} s limit and was "
                "interrupted. Variables assigned before the interruption are kept."
            )
        final, partial, notes = self._after_cell()
        stderr = err.text()
        if notes:
            stderr += ("\n" if stderr and not stderr.endswith("\n") else "") + notes
        return CellResult(
            stdout=out.text(),
            stderr=stderr,
            error=error,
            final=final,
            partial=partial,
            timed_out=timed_out,
            duration_s=time.monotonic() - started,
        )

    def _arm(self, timeout_s: float) -> None:
        self._in_cell = True
        # Model code may have replaced the handler in an earlier cell.
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s, REFIRE_S)

    def _disarm(self) -> None:
        self._in_cell = False
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._in_cell and not self._busy():
            raise CellTimeout

    def _after_cell(self) -> tuple[str | None, str | None, str]:
        """The final answer, the partial answer, and a note about reserved names put back."""
        final = self._final
        partial: str | None = None
        bound = self.namespace.get("answer")
        # A dict the model bound to `answer` counts first; the original object after it.
        for candidate in (bound, self._answer):
            if isinstance(candidate, dict):
                if final is None:
                    final = _ready_content(candidate)
                if partial is None:
                    partial = _content(candidate)
        restored = [n for n, obj in self._reserved.items() if self.namespace.get(n) is not obj]
        for name in restored:
            self.namespace[name] = self._reserved[name]
        note = ""
        if restored:
            names = ", ".join(restored)
            note = f"[note] reserved names were restored to their original values: {names}"
        return final, partial, note


def _ready_content(answer: dict[Any, Any]) -> str | None:
    try:
        ready = bool(answer.get("ready"))
    except Exception:  # model-made objects may fail in any way
        return None
    return (_content(answer) or "") if ready else None


def _content(answer: dict[Any, Any]) -> str | None:
    try:
        content = answer.get("content", "")
        text = content if isinstance(content, str) else str(content)
    except Exception as exc:
        return f"Error: answer['content'] could not be read: {exc!r}"
    return text or None


def _format(exc: BaseException) -> str:
    tb: TracebackType | None = exc.__traceback__
    # The first frame is Repl.run itself, which is noise to the model.
    if tb is not None and tb.tb_frame.f_code is Repl.run.__code__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _describe(value: Any) -> str:
    kind = type(value).__name__
    try:
        if isinstance(value, (str, bytes, list, tuple, dict, set)):
            return f"{kind} (len {len(value):,})"
    except Exception:
        pass
    return kind
