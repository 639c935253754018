"""A file in, a context out: format detection, the converters, the cache, the description.

Every failure to read a file as a document is a ``DocumentError`` naming the file and
saying why; a batch records it for that file and runs the others. A path that does not
exist or is a directory is a ``SpecError``: that is a mistake in the command, not a
document that failed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

from rlm_jobs.config import Settings
from rlm_jobs.errors import DocumentError, SpecError
from rlm_jobs.ingest.base import Converted, Converter
from rlm_jobs.ingest.cache import IngestCache
from rlm_jobs.ingest.formats import Format, detect
from rlm_jobs.ingest.pdf import convert_pdf
from rlm_jobs.ingest.structured import (
    convert_csv,
    convert_json,
    convert_jsonl,
    convert_markdown,
    convert_text,
    convert_tsv,
)
from rlm_jobs.ingest.webpage import convert_html
from rlm_jobs.ingest.word import convert_docx

# Bump when a converter's output changes, so cached conversions are made again.
CONVERTER_VERSION = 1

CONVERTERS: Mapping[Format, Converter] = {
    Format.PDF: convert_pdf,
    Format.DOCX: convert_docx,
    Format.HTML: convert_html,
    Format.MARKDOWN: convert_markdown,
    Format.TEXT: convert_text,
    Format.CSV: convert_csv,
    Format.TSV: convert_tsv,
    Format.JSON: convert_json,
    Format.JSONL: convert_jsonl,
}

# What each format's content looks like to code, for the model.
_SHAPES = {
    Format.PDF: 'each page begins with a line "[page N]"',
    Format.DOCX: 'headings are Markdown "#" lines',
    Format.HTML: 'headings are Markdown "#" lines, list items start with "- ", table cells '
    'are separated by " | "',
    Format.MARKDOWN: 'its "#" lines are section headings',
    Format.TEXT: "",
    Format.CSV: "a list of row dicts, column name -> cell text",
    Format.TSV: "a list of row dicts, column name -> cell text",
    Format.JSON: "the parsed JSON value",
    Format.JSONL: "a list of the parsed records",
}


def converter_stamp() -> str:
    """Our converter version and the libraries' versions, as a short cache namespace."""
    parts = [str(CONVERTER_VERSION)] + [
        f"{lib}={version(lib)}" for lib in ("pypdf", "python-docx", "chardet")
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


class Ingestor:
    def __init__(
        self,
        cache: IngestCache | None = None,
        *,
        max_file_bytes: int = 256 * 1024 * 1024,
        converters: Mapping[Format, Converter] = CONVERTERS,
    ) -> None:
        self.cache = cache
        self._max_file_bytes = max_file_bytes
        self._converters = converters

    @classmethod
    def from_settings(cls, settings: Settings) -> Ingestor:
        cache = (
            IngestCache(settings.ingest_cache_dir, converter_stamp())
            if settings.ingest_cache
            else None
        )
        return cls(cache, max_file_bytes=settings.ingest_max_file_mb * 1024 * 1024)

    def convert_file(self, path: Path) -> Converted:
        return self.convert(path.name, self._read(path), source=str(path))

    def convert(self, name: str, data: bytes, *, source: str | None = None) -> Converted:
        """The content of a file called ``name`` holding ``data``."""
        source = source or name
        fmt = detect(name, data)
        if not isinstance(fmt, Format):
            raise DocumentError(source, fmt)
        sha = hashlib.sha256(data).hexdigest()
        cached = self.cache.get(fmt, sha) if self.cache is not None else None
        if cached is not None:
            return cached
        converted = self._converters[fmt](data, source)
        if self.cache is not None:
            self.cache.put(sha, converted)
        return converted

    def _read(self, path: Path) -> bytes:
        try:
            size = path.stat().st_size
            if path.is_dir():
                raise SpecError(f"{path} is a directory, not a file")
            if size > self._max_file_bytes:
                raise DocumentError(
                    str(path),
                    f"too large ({size / 2**20:,.0f} MiB; the limit is "
                    f"{self._max_file_bytes / 2**20:,.0f} MiB, RLM_JOBS_INGEST_MAX_FILE_MB)",
                )
            return path.read_bytes()
        except FileNotFoundError:
            raise SpecError(f"no such file: {path}") from None
        except OSError as exc:
            raise DocumentError(str(path), f"cannot read it: {exc.strerror or exc}") from None


def describe(name: str, converted: Converted) -> str:
    """One sentence about a document for the model: what it was and how it is laid out."""
    facts = f"{converted.format.label}{f', {converted.detail}' if converted.detail else ''}"
    shape = _SHAPES[converted.format]
    if converted.format is Format.DOCX and "[page " in _head(converted):
        shape += '; each page begins with a line "[page N]"'
    return f"It is {name} ({facts}){f'; {shape}' if shape else ''}."


def _head(converted: Converted) -> str:
    return converted.context[:20] if isinstance(converted.context, str) else ""
