"""DOCX: paragraphs and tables in document order, headings as Markdown ``#`` lines.

python-docx: the maintained reader of the format (lxml underneath). Word and LibreOffice
record where pages began when they last laid the document out; where they did, each page
starts with a ``[page N]`` line, as in PDFs. Headers, footers, footnotes and text boxes
are not read.
"""

from __future__ import annotations

import io
import re
import zipfile

import docx
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from docx.text.paragraph import Paragraph

from rlm_jobs.errors import DocumentError
from rlm_jobs.ingest.base import Converted
from rlm_jobs.ingest.formats import Format
from rlm_jobs.ingest.pdf import page_marker

_HEADING = re.compile(r"^Heading ([1-9])$")


def convert_docx(data: bytes, source: str) -> Converted:
    try:
        document = docx.Document(io.BytesIO(data))
        blocks = list(document.iter_inner_content())
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError) as exc:
        raise DocumentError(source, f"corrupt or unreadable DOCX ({exc})") from exc
    except Exception as exc:  # lxml and python-docx raise many types on damaged XML
        raise DocumentError(source, f"corrupt or unreadable DOCX ({exc!r})") from exc
    paged = any(isinstance(b, Paragraph) and b.contains_page_break for b in blocks)
    lines: list[str] = [page_marker(1)] if paged else []
    page = 1
    headings = tables = 0
    for block in blocks:
        if isinstance(block, Table):
            tables += 1
            lines.extend(_table_lines(block))
            continue
        # A page that begins inside this paragraph: the marker goes before it.
        for _ in block.rendered_page_breaks:
            page += 1
            lines.append(page_marker(page))
        text = block.text.strip()
        if not text:
            continue
        prefix = _prefix(block.style.name if block.style is not None else None)
        headings += prefix.startswith("#")
        lines.append(prefix + text)
    body = "\n\n".join(lines).strip()
    if not body or all(line.startswith("[page ") for line in lines):
        raise DocumentError(source, "DOCX without any text")
    facts = [f"{headings} headings" if headings != 1 else "1 heading"]
    if tables:
        facts.append(f"{tables} table{'s' if tables != 1 else ''}")
    if paged:
        facts.append(f"{page} page{'s' if page != 1 else ''}")
    return Converted(body, Format.DOCX, ", ".join(facts))


def _prefix(style: str | None) -> str:
    if style is None:
        return ""
    if style == "Title":
        return "# "
    heading = _HEADING.match(style)
    if heading:
        return "#" * min(int(heading.group(1)), 6) + " "
    if style.startswith(("List Bullet", "List Number", "List Paragraph")):
        return "- "
    return ""


def _table_lines(table: Table) -> list[str]:
    rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows]
    return ["\n".join(row for row in rows if row.strip(" |"))]
