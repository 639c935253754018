"""Running tool functions on the host: one thread per call, a bounded number at once.

A call that passes its time limit is answered with a timeout error at once; Python cannot
stop a thread, so the tool keeps running in the background and holds its slot until it
returns. The threads are daemons (a hung tool never keeps the process from exiting), and
``concurrency`` bounds them: once every slot is held, a new call waits for one within its
own time limit and then fails saying so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlm_jobs.tools.values import describe_exception


@dataclass(frozen=True)
class Outcome:
    """What a call did: its value, or why it has none."""

    ok: bool
    value: Any = None
    error: str = ""
    duration_s: float = 0.0


class ToolRunner:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._slots = threading.BoundedSemaphore(concurrency)

    def run(
        self,
        name: str,
        function: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        timeout_s: float,
    ) -> Outcome:
        started = time.monotonic()
        if not self._slots.acquire(timeout=timeout_s):
            return Outcome(
                ok=False,
                error=f"{name} did not start within its {timeout_s:g} s limit: all "
                f"{self.concurrency} tool slots of this worker are busy (tool_concurrency)",
                duration_s=time.monotonic() - started,
            )
        done = threading.Event()
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["value"] = function(*args, **kwargs)
            except BaseException as exc:  # SystemExit too: a tool must not end the worker
                box["error"] = describe_exception(name, exc)
            finally:
                self._slots.release()
                done.set()

        threading.Thread(target=call, name=f"rlm-tool-{name}", daemon=True).start()
        left = timeout_s - (time.monotonic() - started)
        if not done.wait(max(0.0, left)):
            return Outcome(
                ok=False,
                error=f"{name} did not finish within its {timeout_s:g} s limit",
                duration_s=time.monotonic() - started,
            )
        duration = time.monotonic() - started
        if "error" in box:
            return Outcome(ok=False, error=box["error"], duration_s=duration)
        return Outcome(ok=True, value=box.get("value"), duration_s=duration)
