"""A job's trajectory: every turn, code block, output and sub-call, with timing and usage.

Entries are kept in the reference logger's JSONL shape (a ``metadata`` line, then one
``iteration`` line per turn) so its trajectory viewer opens our exports unchanged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any


def _now() -> str:
    return datetime.now(UTC).isoformat()


def subcall_entry(
    *,
    model: str,
    prompt: str,
    response: str,
    input_tokens: int,
    output_tokens: int,
    latency_s: float,
    error: bool = False,
    kind: str = "llm",
    child_job_id: str | None = None,
    worker: str = "",
    cached: bool = False,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "root_model": model,
        "prompt": prompt,
        "response": response,
        "usage_summary": {
            "model_usage_summaries": {
                model: {
                    "total_calls": 1,
                    "total_input_tokens": input_tokens,
                    "total_output_tokens": output_tokens,
                }
            }
        },
        "execution_time": latency_s,
        "kind": kind,
    }
    if error:
        entry["error"] = response
    if child_job_id is not None:
        entry["child_job_id"] = child_job_id
    if worker:
        entry["worker"] = worker
    if cached:  # answered from the response cache: nothing reached the provider
        entry["cached"] = True
    return entry


def tool_entry(
    *,
    name: str,
    arguments: str,
    response: str,
    ok: bool,
    latency_s: float,
    replayed: bool = False,
) -> dict[str, Any]:
    """A tool call, shaped like a sub-call so the reference's viewer lists it with them:
    the arguments as its prompt, the result (JSON) or the error as its response."""
    entry: dict[str, Any] = {
        "root_model": f"tool/{name}",
        "prompt": arguments,
        "response": response,
        "usage_summary": {"model_usage_summaries": {}},
        "execution_time": latency_s,
        "kind": "tool",
        "tool": name,
    }
    if not ok:
        entry["error"] = response
    if replayed:  # answered from the journal: the tool did not run again
        entry["replayed"] = True
    return entry


class Trajectory:
    """Collects one job's entries; ``sink`` (if any) receives each entry as it is made."""

    def __init__(self, sink: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._pending_calls: list[dict[str, Any]] = []
        self.entries: list[dict[str, Any]] = []

    def _emit(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        if self._sink is not None:
            self._sink(entry)

    def metadata(self, **fields: Any) -> None:
        self._emit({"type": "metadata", "timestamp": _now(), **fields})

    def add_subcall(self, entry: dict[str, Any]) -> None:
        """Called from sub-call threads while a cell runs; attached to that cell at its end."""
        with self._lock:
            self._pending_calls.append(entry)

    def take_subcalls(self) -> list[dict[str, Any]]:
        with self._lock:
            taken, self._pending_calls = self._pending_calls, []
        return taken

    def iteration(
        self,
        *,
        iteration: int,
        prompt: list[dict[str, str]] | str,
        response: str,
        code_blocks: list[dict[str, Any]],
        final_answer: str | None,
        iteration_time: float,
        usage: dict[str, Any],
        **extra: Any,
    ) -> None:
        """One turn; ``extra`` adds our own fields (``replayed``, ``resumed``), which the
        reference's viewer ignores."""
        self._emit(
            {
                "type": "iteration",
                "iteration": iteration,
                "timestamp": _now(),
                "prompt": prompt,
                "response": response,
                "code_blocks": code_blocks,
                "final_answer": final_answer,
                "iteration_time": iteration_time,
                "usage": usage,
                **extra,
            }
        )


def code_block_entry(
    code: str,
    *,
    stdout: str,
    stderr: str,
    execution_time: float,
    rlm_calls: list[dict[str, Any]],
    error: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    # The reference puts tracebacks in stderr; we do the same so its viewer shows them.
    err_text = "\n".join(part for part in (stderr, error or "", note) if part)
    return {
        "code": code,
        "result": {
            "stdout": stdout,
            "stderr": err_text,
            "locals": {},
            "execution_time": execution_time,
            "rlm_calls": rlm_calls,
        },
    }


def to_jsonl(entries: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
