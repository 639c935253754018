"""Turning files into contexts and documents: what ``rlm-jobs submit``/``batch``/``run`` read.

A file is read by ``rlm_jobs.ingest`` (PDF, DOCX, HTML, Markdown, text in any common
encoding, CSV/TSV, JSON, JSON lines). A batch is a directory (one document per regular
file, id = file name) or a JSONL file (one document per line). In a directory a file that
cannot be read becomes a document with an ``error``: the batch records it as FAILED and
runs the rest. A malformed JSONL line still stops the whole batch with its line number,
before anything is submitted: that is a broken batch file, not a broken document.
A corpus is a directory as one document: a dict file name -> content.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rlm_jobs.config import Settings
from rlm_jobs.contexts import ContextValue
from rlm_jobs.errors import DocumentError, SpecError
from rlm_jobs.ingest import Converted, Format, Ingestor, describe
from rlm_jobs.models import MAX_DESCRIPTION_CHARS, validation_problems
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


def _ingestor(ingestor: Ingestor | None) -> Ingestor:
    return ingestor if ingestor is not None else Ingestor.from_settings(Settings())


def load_document(path: Path | str, *, ingestor: Ingestor | None = None) -> Document:
    """One file as a document (id = file name), told to the model by what it is.

    Raises ``DocumentError`` if the file cannot be read, ``SpecError`` if there is none.
    Without an ``ingestor`` one is made from ``Settings()`` (its cache directory).
    """
    path = Path(path)
    converted = _ingestor(ingestor).convert_file(path)
    return _document(
        {
            "id": path.name,
            "context": converted.context,
            "description": describe(path.name, converted),
        },
        str(path),
    )


def load_context_file(path: Path, *, ingestor: Ingestor | None = None) -> ContextValue:
    """A file's content as a context (see ``load_document``)."""
    context = load_document(path, ingestor=ingestor).context
    assert context is not None  # load_document raises instead
    return context


def _document_files(directory: Path) -> list[Path]:
    """Regular files directly in ``directory``, sorted by name; hidden files and
    subdirectories are not documents."""
    if not directory.is_dir():
        raise SpecError(f"no such directory: {directory}")
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise SpecError(f"{directory} holds no documents (no regular, non-hidden files)")
    return files


def documents_from_dir(directory: Path, *, ingestor: Ingestor | None = None) -> list[Document]:
    """One document per file of ``directory``; one that cannot be read carries its error."""
    reader = _ingestor(ingestor)
    docs = []
    for path in _document_files(directory):
        try:
            docs.append(load_document(path, ingestor=reader))
        except DocumentError as exc:
            docs.append(_document({"id": path.name, "error": exc.reason}, str(path)))
    return docs


def load_corpus(directory: Path | str, *, ingestor: Ingestor | None = None) -> Document:
    """A whole directory as one document: a dict file name -> content, for questions
    across documents. Files that cannot be read are left out, named with their reason in
    the description the model reads (and in ``Document.skipped``); DocumentError if none
    can be read."""
    directory = Path(directory)
    reader = _ingestor(ingestor)
    contents: dict[str, Converted] = {}
    skipped: dict[str, str] = {}
    for path in _document_files(directory):
        try:
            contents[path.name] = reader.convert_file(path)
        except DocumentError as exc:
            skipped[path.name] = exc.reason
    name = directory.resolve().name or str(directory)
    if not contents:
        reasons = "; ".join(f"{n}: {why}" for n, why in skipped.items())
        raise DocumentError(str(directory), f"no document in it can be read ({reasons})")
    return _document(
        {
            "id": name,
            "context": {n: c.context for n, c in contents.items()},
            "description": corpus_description(name, contents, skipped),
            "skipped": skipped,
        },
        str(directory),
    )


# Documents named one by one in a corpus description; the rest are counted.
_MAX_LISTED = 200
# A skipped file's reason, as far as a description quotes it.
_MAX_REASON_CHARS = 200


def corpus_description(name: str, contents: dict[str, Converted], skipped: dict[str, str]) -> str:
    formats = {c.format for c in contents.values()}
    shapes = ["Text documents (PDF, Word, HTML, Markdown, plain text) are strings"]
    if any(
        isinstance(c.context, str) and c.context.startswith("[page ") for c in contents.values()
    ):
        shapes.append(
            "each page of a PDF (or of a Word file that recorded its pages) begins "
            'with a line "[page N]"'
        )
    if formats & {Format.DOCX, Format.HTML, Format.MARKDOWN}:
        shapes.append('headings are Markdown "#" lines')
    if formats & {Format.CSV, Format.TSV}:
        shapes.append("CSV/TSV tables are lists of row dicts (column name -> cell text)")
    if formats & {Format.JSON, Format.JSONL}:
        shapes.append("JSON files are their parsed value, JSON lines files lists of records")
    head = (
        f"It is a corpus of {len(contents)} document{'s' if len(contents) != 1 else ''} from "
        f"the folder {name}: a dict from file name to content. {'; '.join(shapes)}."
    )
    listed = [_listing(n, c) for n, c in list(contents.items())[:_MAX_LISTED]]
    if len(contents) > _MAX_LISTED:
        listed.append(f"and {len(contents) - _MAX_LISTED} more (list(context) names them all)")
    text = f"{head} The documents: {'; '.join(listed)}."
    if skipped:
        reasons = [f"{n} ({_cut(why)})" for n, why in skipped.items()]
        text += (
            f" {len(skipped)} file{'s' if len(skipped) != 1 else ''} could not be read and "
            f"{'are' if len(skipped) != 1 else 'is'} not in it: {'; '.join(reasons)}."
        )
    return _cut(text, MAX_DESCRIPTION_CHARS)


def _listing(name: str, converted: Converted) -> str:
    detail = f", {converted.detail}" if converted.detail else ""
    size = f", {len(converted.context):,} characters" if isinstance(converted.context, str) else ""
    return f"{name} ({converted.format.label}{detail}{size})"


def _cut(text: str, limit: int = _MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def load_documents(path: Path | str, *, ingestor: Ingestor | None = None) -> list[Document]:
    """A batch from a directory (any readable formats) or a JSONL file (one row each)."""
    path = Path(path)
    if path.is_dir():
        return documents_from_dir(path, ingestor=ingestor)
    if not path.exists():
        raise SpecError(f"no such file or directory: {path}")
    if path.suffix.lower() not in JSONL_SUFFIXES:
        raise SpecError(
            f"{path} is neither a directory nor a JSONL file ({', '.join(JSONL_SUFFIXES)})"
        )
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and other separators.
    return documents_from_jsonl_lines(_read_utf8(path).split("\n"), str(path))


def _read_utf8(path: Path) -> str:
    """A batch file is ours (JSON is UTF-8 by definition), so no encoding is guessed."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from None
