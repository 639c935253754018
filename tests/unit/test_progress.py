"""Progress formatting: pure functions of the batch's numbers."""

from __future__ import annotations

from typing import Any

import pytest

from rlm_jobs.progress import (
    Snapshot,
    bar,
    eta_s,
    format_cost,
    format_duration,
    format_tokens,
    render_bar,
    render_line,
    render_preview,
    render_summary,
)


def progress(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "batch_id": "b1",
        "total": 50,
        "finished": 20,
        "completed": 18,
        "failed": 2,
        "running": 8,
        "queued": 22,
        "by_status": {"COMPLETED": 18, "TIMEOUT": 1, "FAILED": 1, "RUNNING": 8, "QUEUED": 22},
        "tokens": 123_456,
        "cost_usd": 0.01234,
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "--"), (0, "0s"), (42.4, "42s"), (59.6, "1m00s"), (187, "3m07s"), (7500, "2h05m")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("tokens", "text"), [(0, "0"), (999, "999"), (12_345, "12.3k"), (1_234_567, "1.23M")]
)
def test_format_tokens(tokens: int, text: str) -> None:
    assert format_tokens(tokens) == text


def test_format_cost_keeps_fractions_of_a_cent_visible() -> None:
    assert format_cost(0.00012) == "$0.0001"
    assert format_cost(0.5) == "$0.5000"
    assert format_cost(1234.5) == "$1,234.50"


def test_eta_is_unknown_until_a_job_finishes_while_watching() -> None:
    assert eta_s(10, 50, 30.0, finished_at_start=10) is None
    assert eta_s(0, 50, 0.0) is None


def test_eta_uses_the_rate_seen_since_watching_began() -> None:
    # Given 10 jobs were done before watching, and 10 more in 20 s
    # Then the remaining 30 take 60 s at that rate.
    assert eta_s(20, 50, 20.0, finished_at_start=10) == pytest.approx(60.0)


def test_eta_is_zero_when_everything_finished() -> None:
    assert eta_s(50, 50, 12.0) == 0.0


def test_bar_fills_in_proportion_and_clamps() -> None:
    assert bar(0.5, 10) == "[#####.....]"
    assert bar(0.0, 4) == "[....]"
    assert bar(1.5, 4) == "[####]"


def test_snapshot_reads_batch_progress() -> None:
    snap = Snapshot.of(progress())
    assert (snap.total, snap.finished, snap.completed, snap.failed) == (50, 20, 18, 2)
    assert not snap.done
    assert Snapshot.of(progress(finished=50)).done


def test_render_bar_shows_counts_tokens_cost_and_eta() -> None:
    line = render_bar(Snapshot.of(progress()), elapsed_s=42, eta=70, columns=200)
    assert line.startswith("[")
    for part in ("20/50 finished", "ok 18", "failed 2", "running 8", "123.5k tok", "$0.0123"):
        assert part in line
    assert "42s elapsed" in line
    assert "ETA 1m10s" in line


@pytest.mark.parametrize("columns", [40, 80, 120, 200])
def test_render_bar_fits_the_terminal(columns: int) -> None:
    line = render_bar(Snapshot.of(progress()), elapsed_s=42, eta=None, columns=columns)
    assert len(line) < columns


def test_render_line_has_no_bar_and_a_label() -> None:
    line = render_line(Snapshot.of(progress()), elapsed_s=5, eta=None, label="batch b1")
    assert line.startswith("batch b1: 20/50 finished")
    assert "ETA --" in line
    assert "#" not in line


def test_summary_names_failure_statuses_tokens_cost_and_wall_time() -> None:
    snap = Snapshot.of(
        progress(
            finished=50,
            running=0,
            queued=0,
            completed=48,
            failed=2,
            by_status={"COMPLETED": 48, "TIMEOUT": 1, "FAILED": 1},
        )
    )
    assert render_summary(snap, 62) == (
        "48/50 completed, 2 failed (1 FAILED, 1 TIMEOUT) | 123,456 tokens | $0.0123 | 1m02s wall"
    )


def test_summary_of_a_clean_run_and_of_an_unfinished_one() -> None:
    clean = Snapshot.of(
        progress(
            finished=50, completed=50, failed=0, running=0, queued=0, by_status={"COMPLETED": 50}
        )
    )
    assert render_summary(clean, 3).startswith("50/50 completed | 123,456 tokens")
    unfinished = render_summary(Snapshot.of(progress()), 3)
    assert "8 RUNNING" in unfinished and "22 QUEUED" in unfinished


def row(doc_id: str, status: str = "COMPLETED", answer: str | None = "yes") -> dict[str, Any]:
    return {"id": doc_id, "status": status, "answer": answer, "reason": "why it ended"}


def test_preview_aligns_ids_and_statuses_and_flattens_answers() -> None:
    lines = render_preview([row("a.txt", answer="one\ntwo"), row("bb.txt", "TIMEOUT", None)])
    assert lines == [
        "  a.txt   COMPLETED  one two",
        "  bb.txt  TIMEOUT    why it ended",
    ]


def test_preview_cuts_long_answers_and_long_lists() -> None:
    rows = [row(f"d{i}", answer="x" * 500) for i in range(12)]
    lines = render_preview(rows, columns=60, limit=10)
    assert len(lines) == 11 and lines[-1] == "  ... and 2 more"
    assert all(len(line) < 60 for line in lines)
    assert lines[0].endswith("...")
    assert render_preview([]) == []


def test_the_bar_keeps_its_width_as_numbers_grow_and_goes_first_when_narrow() -> None:
    early = render_bar(Snapshot.of(progress(finished=1, tokens=5)), 1, None, columns=160)
    late = render_bar(Snapshot.of(progress(finished=49, tokens=9_999_999)), 3600, 5, columns=160)
    assert early.index("]") == late.index("]")
    narrow = render_bar(Snapshot.of(progress()), 42, None, columns=60)
    assert not narrow.startswith("[") and narrow.startswith("20/50 finished")
