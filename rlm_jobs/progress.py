"""Progress text for ``rlm-jobs watch`` and ``run``: pure functions of the batch's numbers.

The CLI owns time and terminals; these functions only format, so they are tested without
either. The input is ``BatchHandle.progress()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Snapshot:
    """The counts a progress display needs, read from ``BatchHandle.progress()``."""

    total: int
    finished: int
    completed: int
    failed: int
    running: int
    queued: int
    tokens: int
    cost_usd: float
    by_status: Mapping[str, int]

    @classmethod
    def of(cls, progress: Mapping[str, Any]) -> Snapshot:
        return cls(
            total=int(progress["total"]),
            finished=int(progress["finished"]),
            completed=int(progress["completed"]),
            failed=int(progress["failed"]),
            running=int(progress["running"]),
            queued=int(progress["queued"]),
            tokens=int(progress["tokens"]),
            cost_usd=float(progress["cost_usd"]),
            by_status=dict(progress.get("by_status", {})),
        )

    @property
    def done(self) -> bool:
        return self.finished >= self.total


def eta_s(
    finished: int, total: int, elapsed_s: float, *, finished_at_start: int = 0
) -> float | None:
    """Seconds left at the rate seen since watching began; None until a job has finished.

    A watcher may attach to a batch that is half done, so the rate counts only jobs that
    finished while it watched (``finished_at_start`` were already done).
    """
    remaining = total - finished
    if remaining <= 0:
        return 0.0
    gained = finished - finished_at_start
    if gained <= 0 or elapsed_s <= 0:
        return None
    return remaining * elapsed_s / gained


def format_duration(seconds: float | None) -> str:
    """``"--"``, ``"42s"``, ``"3m07s"``, ``"2h05m"``: short enough for a status line."""
    if seconds is None:
        return "--"
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_tokens(tokens: int) -> str:
    if tokens < 1_000:
        return str(tokens)
    if tokens < 1_000_000:
        return f"{tokens / 1_000:.1f}k"
    return f"{tokens / 1_000_000:.2f}M"


def format_cost(cost_usd: float) -> str:
    # Scripted and small-model runs cost fractions of a cent; show them rather than "$0.00".
    if cost_usd >= 1:
        return f"${cost_usd:,.2f}"
    return f"${cost_usd:.4f}"


def bar(fraction: float, width: int) -> str:
    """``[#####.....]`` with ``width`` cells inside the brackets; ASCII works on any terminal."""
    width = max(1, width)
    filled = min(width, max(0, int(fraction * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _counts(snap: Snapshot) -> str:
    return (
        f"{snap.finished}/{snap.total} finished  ok {snap.completed}  failed {snap.failed}  "
        f"running {snap.running}  queued {snap.queued}"
    )


def _money(snap: Snapshot) -> str:
    return f"{format_tokens(snap.tokens)} tok  {format_cost(snap.cost_usd)}"


# Cells inside the bar's brackets: a fixed width, so the bar does not wobble as numbers grow.
BAR_WIDTH = 24


def render_bar(snap: Snapshot, elapsed_s: float, eta: float | None, columns: int = 100) -> str:
    """One terminal line (no newline) that fits ``columns``; the bar goes first if it must."""
    tail = (
        f"{_counts(snap)}  {_money(snap)}  "
        f"{format_duration(elapsed_s)} elapsed  ETA {format_duration(eta)}"
    )
    fraction = snap.finished / snap.total if snap.total else 1.0
    line = f"{bar(fraction, BAR_WIDTH)} {tail}"
    if len(line) < columns:
        return line
    # A narrow terminal: drop the bar and keep the numbers, cut to fit.
    return tail[: max(1, columns - 1)]


def render_line(snap: Snapshot, elapsed_s: float, eta: float | None, label: str = "") -> str:
    """A log-friendly line for non-terminals: the same numbers without the bar."""
    prefix = f"{label}: " if label else ""
    return (
        f"{prefix}{_counts(snap)} | {_money(snap)} | "
        f"elapsed {format_duration(elapsed_s)} | ETA {format_duration(eta)}"
    )


def render_summary(snap: Snapshot, wall_s: float) -> str:
    """The closing line: counts (with the statuses of failures), tokens, cost, wall time."""
    failures = {s: n for s, n in sorted(snap.by_status.items()) if s != "COMPLETED" and n}
    unfinished = {s: n for s, n in failures.items() if s in ("QUEUED", "RUNNING")}
    ended = {s: n for s, n in failures.items() if s not in unfinished}
    parts = [f"{snap.completed}/{snap.total} completed"]
    if ended:
        detail = ", ".join(f"{n} {s}" for s, n in ended.items())
        parts.append(f"{sum(ended.values())} failed ({detail})")
    if unfinished:
        parts.append(", ".join(f"{n} {s}" for s, n in unfinished.items()))
    return (
        f"{', '.join(parts)} | {snap.tokens:,} tokens | {format_cost(snap.cost_usd)} | "
        f"{format_duration(wall_s)} wall"
    )


def render_preview(
    rows: Sequence[Mapping[str, Any]], columns: int = 100, limit: int = 10
) -> list[str]:
    """A glance at the results: one line per row (id, status, answer's start), then "...".

    ``rows`` are result rows (``JobRecord.row()``); answers are flattened to one line and cut
    to fit ``columns``.
    """
    shown = rows[:limit]
    if not shown:
        return []
    id_width = min(40, max(len(str(r["id"])) for r in shown))
    status_width = max(len(str(r["status"])) for r in shown)
    lines = []
    for row in shown:
        doc_id = str(row["id"])
        if len(doc_id) > id_width:
            doc_id = doc_id[: id_width - 3] + "..."
        answer = " ".join(str(row.get("answer") or row.get("reason") or "").split())
        line = f"  {doc_id:<{id_width}}  {row['status']:<{status_width}}  {answer}"
        if len(line) > columns - 1:
            line = line[: max(0, columns - 4)] + "..."
        lines.append(line)
    if len(rows) > limit:
        lines.append(f"  ... and {len(rows) - limit} more")
    return lines
