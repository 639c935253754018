"""Turning files into contexts and documents: what ``rlm-jobs submit``/``batch``/``run`` read.

A batch is a directory (one document per regular file, id = file name) or a JSONL file (one
document per line). Everything is loaded and validated before anything is submitted, so a
malformed line stops the whole batch with the line number instead of half-submitting it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rlm_jobs.contexts import ContextValue
from rlm_jobs.errors import SpecError
from rlm_jobs.models import validation_problems
from rlm_jobs.submitter import Document

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines")
# A row names its content one of these ways; "text" reads better for plain documents.
_CONTENT_KEYS = ("context", "text")
_ROW_KEYS = frozenset({"id", "query", *_CONTENT_KEYS})


def parse_context(text: str, *, as_json: bool, source: str) -> ContextValue:
    """A context from file content: JSON (str, list or dict) when asked, otherwise the text."""
    if not as_json:
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{source}: invalid JSON: {exc}") from exc
    if not isinstance(value, str | list | dict):
        raise SpecError(
            f"{source}: a JSON context must be a string, list or object, not {type(value).__name__}"
        )
    return value


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise SpecError(f"{path} is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from None


def load_context_file(path: Path) -> ContextValue:
    """``.json`` files are JSON contexts (str, list or dict); anything else is text."""
    return parse_context(_read_text(path), as_json=path.suffix.lower() == ".json", source=str(path))


def documents_from_dir(directory: Path) -> list[Document]:
    """One document per regular file directly in ``directory``, sorted by name.

    Hidden files (``.gitkeep``, ``.DS_Store``) and subdirectories are not documents.
    """
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise SpecError(f"{directory} holds no documents (no regular, non-hidden files)")
    return [_document({"id": p.name, "context": load_context_file(p)}, str(p)) for p in files]


def _document(fields: dict[str, Any], source: str) -> Document:
    try:
        return Document(**fields)
    except ValidationError as exc:
        raise SpecError(f"{source}: {validation_problems(exc, 'row')}") from None


def _row_document(row: Any, line_no: int, source: str) -> Document:
    where = f"{source}:{line_no}"
    if not isinstance(row, dict):
        raise SpecError(f"{where}: a row must be a JSON object, not {type(row).__name__}")
    unknown = sorted(set(row) - _ROW_KEYS)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {_allowed()})")
    present = [k for k in _CONTENT_KEYS if k in row]
    if len(present) != 1:
        raise SpecError(f"{where}: a row needs exactly one of 'context' or 'text'")
    content = row[present[0]]
    if not isinstance(content, str | list | dict):
        raise SpecError(
            f"{where}: '{present[0]}' must be a string, list or object, "
            f"not {type(content).__name__}"
        )
    doc_id = row.get("id", line_no)
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
        raise SpecError(f"{where}: 'id' must be a string or an integer")
    fields: dict[str, Any] = {"id": str(doc_id), "context": content}
    if row.get("query") is not None:
        fields["query"] = row["query"]
    return _document(fields, where)


def _allowed() -> str:
    return ", ".join(sorted(_ROW_KEYS))


def documents_from_jsonl_lines(lines: Iterable[str], source: str = "<jsonl>") -> list[Document]:
    """Documents from JSONL lines; blank lines are skipped but still counted.

    A row without an id gets its 1-based line number, so ids stay stable when the file is
    resubmitted unchanged.
    """
    docs: list[Document] = []
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{source}:{line_no}: invalid JSON: {exc.msg}") from None
        doc = _row_document(row, line_no, source)
        if doc.id in first_line:
            raise SpecError(
                f"{source}:{line_no}: id {doc.id!r} already used on line {first_line[doc.id]}"
            )
        first_line[doc.id] = line_no
        docs.append(doc)
    if not docs:
        raise SpecError(f"{source} holds no documents")
    return docs


def load_documents(path: Path) -> list[Document]:
    """A batch from a directory or a JSONL file."""
    if path.is_dir():
        return documents_from_dir(path)
    if not path.exists():
        raise SpecError(f"no such file or directory: {path}")
    if path.suffix.lower() not in JSONL_SUFFIXES:
        raise SpecError(
            f"{path} is neither a directory nor a JSONL file ({', '.join(JSONL_SUFFIXES)})"
        )
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and other separators.
    return documents_from_jsonl_lines(_read_text(path).split("\n"), str(path))
