"""What a running job tree needs, passed in rather than looked up.

``Engine`` holds the process-wide parts (the dispatcher every model call goes through,
the sandbox factory, the context store, the journals, the custom tools); ``JobControl``
the per-tree state (usage meter, deadline, cancellation, hand-over, observer). The loop
receives both; nothing here imports Celery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from rlm_jobs.config import Settings
from rlm_jobs.contexts import put_context
from rlm_jobs.dispatch import Dispatcher
from rlm_jobs.journal import Journals, JournalStore
from rlm_jobs.models import ContextRef, JobResult, JobSpec, UsageMeter
from rlm_jobs.sandboxes.base import Repl, ReplFactory
from rlm_jobs.tools import Toolbox
from rlm_jobs.trajectory import Trajectory


class LoopObserver:
    """Hooks for the service layer (records, progress events); the default does nothing."""

    def trajectory_sink(self, job_id: str) -> Callable[[dict[str, Any]], None] | None:
        return None

    def job_started(self, job_id: str, spec: JobSpec) -> None:
        """A job (root or child) begins; children are announced before they start."""

    def progress(self, job_id: str, spec: JobSpec, counters: dict[str, Any]) -> None:
        """Counters changed: iteration, sub-calls done / in flight, tokens, cost."""

    def job_finished(self, job_id: str, spec: JobSpec, result: JobResult) -> None:
        """A job (root or child) ended with this result."""


@dataclass
class Engine:
    # Every model call of a job, root and sub-calls alike, goes through the dispatcher.
    dispatcher: Dispatcher
    repl_factory: ReplFactory
    store_context: Callable[[str], ContextRef]
    journals: Journals
    child_concurrency: int = 4
    default_sub_model: str | None = None
    # The user's tools, callable from every job's REPL (children's too); None: no tools.
    tools: Toolbox | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        client: redis.Redis,
        *,
        dispatcher: Dispatcher,
        repl_factory: ReplFactory,
        journals: Journals | None = None,
        tools: Toolbox | None = None,
    ) -> Engine:
        """The one way an engine is assembled (library mode and orchestrator workers)."""
        return cls(
            dispatcher=dispatcher,
            repl_factory=repl_factory,
            store_context=lambda value: put_context(client, value),
            journals=journals or JournalStore(client),
            child_concurrency=settings.child_concurrency,
            default_sub_model=settings.sub_model,
            tools=tools,
        )


class OpenRepls:
    """The live REPLs of a job tree, so a cancellation can stop them mid-cell."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._repls: set[Repl] = set()
        self._interrupted = False

    def add(self, repl: Repl) -> None:
        with self._lock:
            interrupted = self._interrupted
            self._repls.add(repl)
        if interrupted:
            repl.close()

    def discard(self, repl: Repl) -> None:
        with self._lock:
            self._repls.discard(repl)

    def interrupt(self) -> None:
        """Close every REPL of the tree now (and any opened later)."""
        with self._lock:
            self._interrupted = True
            repls = list(self._repls)
        for repl in repls:
            repl.close()


@dataclass
class JobControl:
    """Per job tree: one meter chain, one deadline, one cancel switch."""

    meter: UsageMeter
    deadline: float
    cancelled: Callable[[], str | None] = lambda: None
    # A reason when this run must hand the job back unfinished (its worker is shutting down,
    # or another worker took the job over): it stops, leaving its journal for the next run.
    handover: Callable[[], str | None] = lambda: None
    observer: LoopObserver = field(default_factory=LoopObserver)
    repls: OpenRepls = field(default_factory=OpenRepls)

    @classmethod
    def for_root(
        cls,
        spec: JobSpec,
        *,
        cancelled: Callable[[], str | None] | None = None,
        handover: Callable[[], str | None] | None = None,
        observer: LoopObserver | None = None,
    ) -> JobControl:
        return cls(
            meter=UsageMeter(spec.limits.max_tokens, spec.limits.max_cost_usd),
            deadline=time.monotonic() + spec.limits.max_timeout_s,
            cancelled=cancelled or (lambda: None),
            handover=handover or (lambda: None),
            observer=observer or LoopObserver(),
        )

    def for_child(self, spec: JobSpec) -> JobControl:
        return JobControl(
            meter=UsageMeter(parent=self.meter),
            deadline=min(self.deadline, time.monotonic() + spec.limits.max_timeout_s),
            cancelled=self.cancelled,
            handover=self.handover,
            observer=self.observer,
            repls=self.repls,
        )

    def new_trajectory(self, job_id: str) -> Trajectory:
        return Trajectory(sink=self.observer.trajectory_sink(job_id))
