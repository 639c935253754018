"""Which Celery pools the workers run on: threads (the app's default) and solo, nothing else.

A worker process keeps per-process state its tasks share: one runtime (a worker identity
naming the process's reply list and its lease holders, Redis pools, SDK clients), the reply
collector, lease keeper and pub/sub threads, the sandbox pool, and, in the consumer, the
prompt credit counted from the tasks it reserved. The prefork pool breaks that: a pool
child forked after the parent built its runtime (at start it warms up the model clients
and runs the reaper) inherits the parent's objects, so replacement children share one
worker identity and take each other's sub-call replies (their cells then wait forever),
and they use connections and locks made in another process; tasks end in the children
while the prompt credit is kept in the parent. Threads need none of it (the work waits on
the network), so the app sets ``worker_pool = "threads"`` and this worker bootstep refuses
the other pools with one line instead of failing jobs later. ``solo`` runs one task at a
time on the consumer's thread; it works, for debugging.

Celery cannot tell ``--pool prefork`` on the command line from its own default (it swaps
the default for the configured ``worker_pool``), so the explicit spelling is read from the
command line itself: asking for prefork is refused rather than quietly run on threads.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click
from celery import bootsteps
from celery.concurrency import get_implementation
from click.core import ParameterSource

SUPPORTED_POOLS = ("threads", "solo")
_PREFORK_NAMES = ("prefork", "processes")


def pool_asked_on_command_line(argv: Sequence[str]) -> str | None:
    """The value of ``-P``/``--pool`` in a ``celery worker`` command line, if any."""
    for i, arg in enumerate(argv):
        if arg in ("-P", "--pool") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--pool="):
            return arg.split("=", 1)[1]
        if arg.startswith("-P") and len(arg) > 2:
            return arg[2:].lstrip("=")
    return None


def _prefork_asked_explicitly() -> bool:
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.get_parameter_source("pool") is not ParameterSource.COMMANDLINE:
        return False
    return pool_asked_on_command_line(sys.argv[1:]) in _PREFORK_NAMES


def refusal(pool_cls: Any, *, prefork_asked: bool = False) -> str | None:
    """Why a worker may not start on ``pool_cls`` (a pool class), or None if it may."""
    supported = any(pool_cls is get_implementation(name) for name in SUPPORTED_POOLS)
    if supported and not prefork_asked:
        return None
    name = "prefork" if prefork_asked else _pool_name(pool_cls)
    why = (
        "a forked pool child would share its parent's runtime (reply list, connections, locks)"
        if name == "prefork"
        else "it is not one they are built and tested for"
    )
    return (
        f"rlm-jobs workers run on the threads pool (the default) or solo, not {name}: {why}; "
        "drop --pool or use --pool threads, and scale with -c or more processes"
    )


def _pool_name(pool_cls: Any) -> str:
    module = str(getattr(pool_cls, "__module__", pool_cls))
    return "prefork" if module.endswith(".prefork") else module.rsplit(".", 1)[-1]


class SupportedPool(bootsteps.Step):  # type: ignore[misc]  # celery ships no type hints
    """Worker bootstep: stops ``celery worker`` at start on a pool that would fail jobs."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        problem = refusal(worker.pool_cls, prefork_asked=_prefork_asked_explicitly())
        if problem is not None:
            raise SystemExit(problem)
        super().__init__(worker, **kwargs)
