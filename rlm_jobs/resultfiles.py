"""Result rows as files: JSONL (one row per line, everything kept) or CSV (one flat table).

CSV columns are the row's own fields (usage reduced to tokens and cost), then one column
per top-level field of the batch's answer schema, filled from each row's ``structured``
value, then any other top-level keys those values have. Cells that are not strings
(numbers, booleans, lists, objects) are written as JSON; missing values are empty.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import IO, Any


class ResultFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"

    @classmethod
    def for_output(cls, chosen: str | None, path: str) -> ResultFormat:
        """The format asked for, else CSV for a ``.csv`` file, else JSONL."""
        if chosen is not None:
            return cls(chosen)
        return cls.CSV if path.lower().endswith(".csv") else cls.JSONL


# The row fields a CSV keeps, in this order; usage and structured are flattened.
BASE_COLUMNS = (
    "id", "job_id", "batch_id", "status", "reason", "answer", "iterations", "total_tokens",
    "cost_usd", "execution_time_s", "attempts",
)  # fmt: skip


def write_jsonl(rows: Iterable[dict[str, Any]], out: IO[str]) -> None:
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


def schema_fields(schema: dict[str, Any] | None) -> list[str]:
    """Top-level property names of an object schema, in the schema's order."""
    if not schema or not isinstance(schema.get("properties"), dict):
        return []
    return [str(name) for name in schema["properties"]]


def structured_columns(rows: Sequence[dict[str, Any]], schema: dict[str, Any] | None) -> list[str]:
    names = schema_fields(schema)
    for row in rows:
        value = row.get("structured")
        if isinstance(value, dict):
            names.extend(str(k) for k in value if str(k) not in names)
    return names


def write_csv(
    rows: Sequence[dict[str, Any]], out: IO[str], schema: dict[str, Any] | None = None
) -> list[str]:
    """Write the rows as one CSV table; returns its header."""
    fields = structured_columns(rows, schema)
    # A schema field called like a row field ("status") gets a prefix rather than a clash.
    field_columns = [f"structured.{f}" if f in BASE_COLUMNS else f for f in fields]
    lone_value = any(
        r.get("structured") is not None and not isinstance(r.get("structured"), dict) for r in rows
    )
    header = [*BASE_COLUMNS, *field_columns, *(["structured"] if lone_value else [])]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        usage = row.get("usage") or {}
        flat: dict[str, Any] = {
            **{c: row.get(c) for c in BASE_COLUMNS},
            "total_tokens": usage.get("total_tokens"),
            "cost_usd": usage.get("cost_usd"),
        }
        value = row.get("structured")
        cells = [_cell(flat[c]) for c in BASE_COLUMNS]
        cells += [_cell(value.get(f)) if isinstance(value, dict) else "" for f in fields]
        if lone_value:
            cells.append("" if isinstance(value, dict) else _cell(value))
        writer.writerow(cells)
    return header


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
