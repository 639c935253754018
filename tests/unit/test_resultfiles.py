"""Result rows as CSV: a schema's top-level fields become columns."""

from __future__ import annotations

import csv
import io
from typing import Any

from rlm_jobs.resultfiles import BASE_COLUMNS, ResultFormat, write_csv, write_jsonl

SCHEMA = {
    "type": "object",
    "properties": {"vendor": {}, "total": {}, "lines": {}, "status": {}},
}


def row(doc: str, status: str, structured: Any, answer: str | None = "raw") -> dict[str, Any]:
    return {
        "id": doc, "job_id": f"job-{doc}", "batch_id": "b", "status": status, "answer": answer,
        "structured": structured, "reason": "why", "usage": {"total_tokens": 12, "cost_usd": 0.5},
        "iterations": 3, "execution_time_s": 1.5, "attempts": 1,
    }  # fmt: skip


def read(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_schema_fields_are_columns_and_nested_values_json() -> None:
    rows = [
        row("a.pdf", "COMPLETED", {"vendor": "ACME, Inc.", "total": 12.5, "lines": [{"n": 1}],
                                  "status": "paid", "extra": True}),
        row("b.pdf", "FAILED", None, answer='{"vendor": 3}'),
    ]  # fmt: skip
    out = io.StringIO()
    header = write_csv(rows, out, SCHEMA)
    assert header == [*BASE_COLUMNS, "vendor", "total", "lines", "structured.status", "extra"]
    first, second = read(out.getvalue())
    assert first["vendor"] == "ACME, Inc." and first["total"] == "12.5"
    assert first["lines"] == '[{"n": 1}]' and first["extra"] == "true"
    assert first["status"] == "COMPLETED" and first["structured.status"] == "paid"
    assert (first["total_tokens"], first["cost_usd"], first["iterations"]) == ("12", "0.5", "3")
    assert second["status"] == "FAILED" and second["answer"] == '{"vendor": 3}'
    assert second["vendor"] == "" and second["total"] == ""


def test_without_a_schema_keys_come_from_the_values_and_lone_values_get_a_column() -> None:
    rows = [row("1", "COMPLETED", {"k": "v"}), row("2", "COMPLETED", [1, 2]), row("3", "X", None)]
    out = io.StringIO()
    header = write_csv(rows, out)
    assert header == [*BASE_COLUMNS, "k", "structured"]
    cells = read(out.getvalue())
    assert [(c["k"], c["structured"]) for c in cells] == [("v", ""), ("", "[1, 2]"), ("", "")]


def test_plain_rows_still_make_a_table() -> None:
    out = io.StringIO()
    assert write_csv([row("1", "COMPLETED", None, answer="line one\nline two")], out) == list(
        BASE_COLUMNS
    )
    assert read(out.getvalue())[0]["answer"] == "line one\nline two"


def test_jsonl_keeps_every_field_and_the_format_follows_the_file_name() -> None:
    out = io.StringIO()
    write_jsonl([row("é", "COMPLETED", {"a": 1})], out)
    assert out.getvalue().count("\n") == 1 and '"id": "é"' in out.getvalue()
    assert ResultFormat.for_output(None, "results.CSV") is ResultFormat.CSV
    assert ResultFormat.for_output(None, "-") is ResultFormat.JSONL
    assert ResultFormat.for_output("jsonl", "x.csv") is ResultFormat.JSONL
