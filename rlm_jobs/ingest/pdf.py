"""PDF: the text layer of each page, each page starting with a ``[page N]`` line.

pypdf: pure Python, no system libraries, maintained, and good enough on text layers; it
does no OCR, so a scanned PDF (pages that are only images) is refused with that reason.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from pypdf import PdfReader

from rlm_jobs.errors import DocumentError
from rlm_jobs.ingest.base import Converted
from rlm_jobs.ingest.formats import Format

NO_TEXT_NOTE = "(no text on this page)"


def page_marker(number: int) -> str:
    return f"[page {number}]"


@contextmanager
def _quiet_pypdf() -> Iterator[None]:
    """pypdf logs what it repairs ("EOF marker not found") as warnings; the reason for a
    PDF that cannot be read comes from its exception, so those lines are only noise."""
    logger = logging.getLogger("pypdf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def convert_pdf(data: bytes, source: str) -> Converted:
    # pypdf raises a dozen types on damaged files (its own, ValueError, KeyError, ...):
    # every one means "this PDF cannot be read", and the message says why.
    try:
        with _quiet_pypdf():
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise DocumentError(source, "encrypted PDF: remove its password first")
            pages = [page.extract_text() or "" for page in reader.pages]
    except DocumentError:
        raise
    except Exception as exc:
        raise DocumentError(source, f"corrupt or unreadable PDF ({_why(exc)})") from exc
    if not pages:
        raise DocumentError(source, "PDF without pages")
    texts = [page.strip() for page in pages]
    with_text = sum(1 for text in texts if text)
    if not with_text:
        raise DocumentError(
            source,
            f"PDF without a text layer (none of its {len(pages)} pages has text: a scanned "
            "document? run OCR on it first)",
        )
    body = "\n\n".join(
        f"{page_marker(n)}\n{text or NO_TEXT_NOTE}" for n, text in enumerate(texts, start=1)
    )
    detail = f"{len(pages)} page{'s' if len(pages) != 1 else ''}"
    if with_text < len(pages):
        detail += f", {len(pages) - with_text} of them without text"
    return Converted(body, Format.PDF, detail)


def _why(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
