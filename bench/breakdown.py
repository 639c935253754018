"""Where the time of a library-mode job goes: phase timers around rlm-jobs' own methods.

``PhaseTimer`` wraps a few methods for the duration of a ``with`` block (sandbox start
and close, cells, model calls, storing the context) and sums their wall time per phase,
so a slow job can be explained without a profiler. Nested phases overlap (a cell includes
its sub-calls), so the phases do not add up to the job's time.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rlm_jobs import api
from rlm_jobs.clients.router import LLMRouter
from rlm_jobs.sandboxes import acl
from rlm_jobs.sandboxes.session import SandboxSession

# (owner, attribute, phase name). The sandbox code is being reworked: a method that is
# not there (any more) is skipped, so the breakdown shows what exists in this tree.
_TARGETS: list[tuple[Any, str, str]] = [
    (SandboxSession, "__init__", "sandbox session open (start or take from pool)"),
    (SandboxSession, "_start", "sandbox start (launch to ready)"),
    (SandboxSession, "close", "sandbox close (on the job's path)"),
    (SandboxSession, "run_cell", "cells (incl. their sub-calls)"),
    (SandboxSession, "_wait_exit", "wait for the runtime to exit"),
    (LLMRouter, "complete", "model calls (root and sub)"),
    (api, "put_context", "store context in Redis"),
    (acl, "create_user", "sandbox ACL user create"),
]


class PhaseTimer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def _wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[phase] += time.perf_counter() - started
                    self.calls[phase] += 1

        return timed

    @contextmanager
    def installed(self) -> Iterator[PhaseTimer]:
        present = [(o, n, p) for o, n, p in _TARGETS if callable(getattr(o, n, None))]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in present]
        try:
            for owner, name, phase in present:
                setattr(owner, name, self._wrap(phase, getattr(owner, name)))
            yield self
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)

    def per_job(self, jobs: int) -> dict[str, dict[str, float]]:
        return {
            phase: {"seconds_per_job": self.seconds[phase] / jobs, "calls_per_job": n / jobs}
            for phase, n in self.calls.items()
        }
