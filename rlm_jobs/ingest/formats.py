"""Which converter reads a file: by its suffix, else by its first bytes."""

from __future__ import annotations

import io
import zipfile
from enum import StrEnum


class Format(StrEnum):
    PDF = "pdf"
    DOCX = "docx"
    HTML = "html"
    MARKDOWN = "markdown"
    TEXT = "text"
    CSV = "csv"
    TSV = "tsv"
    JSON = "json"
    JSONL = "jsonl"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Format.PDF: "PDF",
    Format.DOCX: "Word document",
    Format.HTML: "HTML page",
    Format.MARKDOWN: "Markdown",
    Format.TEXT: "plain text",
    Format.CSV: "CSV table",
    Format.TSV: "TSV table",
    Format.JSON: "JSON",
    Format.JSONL: "JSON lines",
}

_SUFFIXES = {
    ".pdf": Format.PDF,
    ".docx": Format.DOCX,
    ".html": Format.HTML,
    ".htm": Format.HTML,
    ".xhtml": Format.HTML,
    ".md": Format.MARKDOWN,
    ".markdown": Format.MARKDOWN,
    ".csv": Format.CSV,
    ".tsv": Format.TSV,
    ".json": Format.JSON,
    ".jsonl": Format.JSONL,
    ".ndjson": Format.JSONL,
    ".jsonlines": Format.JSONL,
}

# Formats people put in document folders that we do not read, with what to do instead.
UNSUPPORTED_SUFFIXES = {
    ".doc": "legacy Word .doc is not supported: save it as .docx",
    ".xls": "spreadsheets are not supported: export the sheet as CSV",
    ".xlsx": "spreadsheets are not supported: export the sheet as CSV",
    ".ppt": "presentations are not supported: export them as PDF",
    ".pptx": "presentations are not supported: export them as PDF",
}

# First bytes of binary formats that are often found beside documents; named in the reason.
_BINARY_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x7fELF", "an executable"),
    (b"\xd0\xcf\x11\xe0", "a legacy Office file (.doc/.xls/.ppt): save it in a newer format"),
)


def sniff_binary(head: bytes) -> str | None:
    """What a known binary format is ("a PNG image"), from a file's first bytes."""
    for magic, what in _BINARY_MAGIC:
        if head.startswith(magic):
            return what
    return None


def detect(name: str, data: bytes) -> Format | str:
    """The format to read ``data`` as, or the reason it cannot be read.

    A known suffix wins (a broken ``.pdf`` should fail as a PDF, with the PDF reader's
    reason); other files are recognised by content, and anything else is tried as text.
    """
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if suffix in UNSUPPORTED_SUFFIXES:
        return UNSUPPORTED_SUFFIXES[suffix]
    head = data[:1024]
    if head.startswith(b"%PDF-"):
        return Format.PDF
    if head.startswith(b"PK\x03\x04"):
        return Format.DOCX if _is_docx(data) else "a ZIP archive, not a document"
    binary = sniff_binary(head)
    if binary is not None:
        return f"{binary}, not a document"
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return Format.HTML
    return Format.TEXT


def _is_docx(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "word/document.xml" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
