"""The eight scenarios; each is ``run(ctx) -> dict`` and reports, never asserts.

A scenario result is JSON: ``title``, ``config``, ``metrics`` (name -> ``stats.summary``),
``targets`` (name -> ``stats.target``), ``notes`` and ``plot`` data. A scenario that cannot
run here returns ``{"skipped": reason}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cluster import ORCHESTRATE_QUEUE, Cluster, WorkerSpec, llm_spec

log = logging.getLogger("bench")


@dataclass
class RunContext:
    cluster: Cluster
    smoke: bool
    workdir: Path
    # Where the reference implementation's Python lives; None if it could not be set up.
    reference_python: Path | None
    reference_problem: str | None = None

    def size(self, full: int, smoke: int) -> int:
        return smoke if self.smoke else full


def standard_workers() -> list[WorkerSpec]:
    """The workers most scenarios share: one orchestrator (4 threads), one llm (16)."""
    return [WorkerSpec(ORCHESTRATE_QUEUE, 4), llm_spec(16)]


Scenario = Callable[[RunContext], dict[str, Any]]


def result(
    title: str,
    *,
    config: dict[str, Any],
    metrics: dict[str, Any],
    targets: dict[str, Any],
    notes: list[str],
    plot: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "title": title,
        "config": config,
        "metrics": metrics,
        "targets": targets,
        "notes": notes,
        "plot": plot or {},
    }
