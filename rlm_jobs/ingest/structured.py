"""Plain text, Markdown, and structured files (CSV/TSV, JSON, JSON lines).

A CSV becomes a list of row dicts, header name -> cell text: each row is a record code
can filter (``[r for r in context if r["region"] == "North"]``) without looking the header
up, it is plain JSON, and cells stay the strings the file holds (``"007"`` is not turned
into 7, a date is not guessed at). Markdown is kept as written: its ``#`` headings are the
section markers.
"""

from __future__ import annotations

import csv
import io
import json
import re

from rlm_jobs.errors import DocumentError
from rlm_jobs.ingest.base import Converted
from rlm_jobs.ingest.formats import Format
from rlm_jobs.ingest.text import Decoded, decode

# Enough rows to tell ';' from ',' and from tabs, little enough to sniff in a millisecond.
_SNIFF_CHARS = 64 * 1024
_DELIMITERS = ",;\t|"
_MD_HEADING = re.compile(r"^#{1,6} \S", re.MULTILINE)
# Columns named in a description at most; wider tables are summarised.
_MAX_NAMED_COLUMNS = 40


def _text(data: bytes, source: str) -> Decoded:
    decoded = decode(data, source)
    if not decoded.text.strip():
        raise DocumentError(source, "empty file: nothing to read")
    return decoded


def _encoding_note(decoded: Decoded) -> str:
    notes = []
    if decoded.encoding not in ("utf-8", "ascii"):
        notes.append(f"decoded from {decoded.encoding}")
    if decoded.replaced:
        notes.append(f"{decoded.replaced} undecodable bytes replaced by U+FFFD")
    return ", ".join(notes)


def convert_text(data: bytes, source: str) -> Converted:
    decoded = _text(data, source)
    return Converted(decoded.text, Format.TEXT, _encoding_note(decoded))


def convert_markdown(data: bytes, source: str) -> Converted:
    decoded = _text(data, source)
    headings = len(_MD_HEADING.findall(decoded.text))
    facts = [f"{headings} heading{'s' if headings != 1 else ''}", _encoding_note(decoded)]
    return Converted(decoded.text, Format.MARKDOWN, ", ".join(f for f in facts if f))


def convert_csv(data: bytes, source: str) -> Converted:
    return _table(data, source, Format.CSV)


def convert_tsv(data: bytes, source: str) -> Converted:
    return _table(data, source, Format.TSV)


def _table(data: bytes, source: str, fmt: Format) -> Converted:
    decoded = _text(data, source)
    text = decoded.text
    dialect: type[csv.Dialect] | csv.Dialect = csv.excel_tab if fmt is Format.TSV else csv.excel
    if fmt is Format.CSV:
        dialect = _sniff(text)
    try:
        rows = [
            row for row in csv.reader(io.StringIO(text), dialect) if any(c.strip() for c in row)
        ]
    except csv.Error as exc:
        raise DocumentError(source, f"malformed {fmt.label}: {exc}") from None
    if not rows:
        raise DocumentError(source, f"{fmt.label} without rows")
    columns = _column_names(rows[0], max(len(r) for r in rows))
    records = [
        dict(zip(columns, row + [""] * (len(columns) - len(row)), strict=True)) for row in rows[1:]
    ]
    named = ", ".join(columns[:_MAX_NAMED_COLUMNS])
    more = (
        f" and {len(columns) - _MAX_NAMED_COLUMNS} more"
        if len(columns) > _MAX_NAMED_COLUMNS
        else ""
    )
    detail = f"{len(records)} rows with the columns {named}{more}; every cell is a string"
    note = _encoding_note(decoded)
    return Converted(records, fmt, f"{detail}; {note}" if note else detail)


def _sniff(text: str) -> type[csv.Dialect] | csv.Dialect:
    """The CSV dialect; rows too irregular for the sniffer go by the header's delimiter."""
    try:
        return csv.Sniffer().sniff(text[:_SNIFF_CHARS], delimiters=_DELIMITERS)
    except csv.Error:
        header = text.split("\n", 1)[0]
        counts = {d: header.count(d) for d in _DELIMITERS}
        return (
            _BY_DELIMITER[max(counts, key=lambda d: counts[d])]
            if any(counts.values())
            else csv.excel
        )


class _Semicolon(csv.excel):
    delimiter = ";"


class _Pipe(csv.excel):
    delimiter = "|"


_BY_DELIMITER: dict[str, type[csv.Dialect]] = {
    ",": csv.excel, ";": _Semicolon, "\t": csv.excel_tab, "|": _Pipe,
}  # fmt: skip


def _column_names(header: list[str], width: int) -> list[str]:
    """Header cells as keys: blank ones named by position, repeats numbered."""
    names: list[str] = []
    for i in range(width):
        base = header[i].strip() if i < len(header) else ""
        name = base or f"column_{i + 1}"
        k = 2
        while name in names:
            name = f"{base or f'column_{i + 1}'}_{k}"
            k += 1
        names.append(name)
    return names


def convert_json(data: bytes, source: str) -> Converted:
    text = _text(data, source).text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(source, f"invalid JSON: {exc}") from None
    except RecursionError:
        raise DocumentError(source, "invalid JSON: nested too deeply") from None
    if isinstance(value, dict):
        return Converted(value, Format.JSON, f"a JSON object with {len(value)} keys")
    if isinstance(value, list):
        return Converted(value, Format.JSON, f"a JSON array of {len(value)} items")
    if isinstance(value, str):
        return Converted(value, Format.JSON, "a JSON string")
    raise DocumentError(
        source, f"a JSON context must be a string, list or object, not {type(value).__name__}"
    )


def convert_jsonl(data: bytes, source: str) -> Converted:
    records = []
    for line_no, line in enumerate(_text(data, source).text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DocumentError(source, f"line {line_no}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise DocumentError(source, f"line {line_no}: JSON nested too deeply") from None
    return Converted(records, Format.JSONL, f"{len(records)} records, one per line of the file")
