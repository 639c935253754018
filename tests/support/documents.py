"""Real document files made by the tests: PDFs written byte by byte, DOCX through python-docx.

The PDFs are complete, valid files (catalog, page tree, a standard font, content streams,
cross-reference table), so the converter under test reads them the way it reads any PDF.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import docx


def _pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def _text_stream(lines: list[str]) -> bytes:
    ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
    for line in lines:
        ops.append(f"{_pdf_string(line)} Tj T*")
    ops.append("ET")
    return "\n".join(ops).encode("latin-1")


def _image_only_stream() -> bytes:
    # A grey box where a scanner would put the page image: marks on the page, no text.
    return b"0.5 g 72 72 468 648 re f"


def _assemble(streams: list[bytes]) -> bytes:
    n = len(streams)
    # Objects: 1 catalog, 2 pages, 3 font, then (page, content) pairs.
    page_ids = [4 + 2 * i for i in range(n)]
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    }
    for page_id, stream in zip(page_ids, streams, strict=True):
        objects[page_id] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_id + 1} 0 R >>"
        ).encode()
        objects[page_id + 1] = (
            f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream"
        )
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = out.tell()
        out.write(f"{number} 0 obj\n".encode() + objects[number] + b"\nendobj\n")
    xref = out.tell()
    size = max(objects) + 1
    out.write(f"xref\n0 {size}\n0000000000 65535 f \n".encode())
    for number in range(1, size):
        out.write(f"{offsets[number]:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def pdf_with_text(pages: list[list[str]]) -> bytes:
    """A PDF whose pages carry these lines in a text layer (Latin-1 characters only)."""
    return _assemble([_text_stream(lines) for lines in pages])


def scanned_pdf(pages: int = 2) -> bytes:
    """A PDF whose pages have marks but no text layer, like a scan without OCR."""
    return _assemble([_image_only_stream() for _ in range(pages)])


def corrupt_pdf() -> bytes:
    """The start of a real PDF cut off in its first object, as a failed download leaves it."""
    whole = pdf_with_text([["This file was cut short."]])
    return whole[: len(whole) // 3]


def docx_file(heading: str, paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    document = docx.Document()
    document.add_heading(heading, level=1)
    for text in paragraphs:
        document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def binary_blob(size: int = 4096) -> bytes:
    """Bytes no text encoding explains: every byte value, over and over."""
    return bytes(i % 256 for i in range(size))


INVOICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "invoice_number": {"type": "string", "description": "the invoice number"},
        "total_due": {"type": "integer", "description": "the total amount due"},
        "currency": {"enum": ["USD", "GBP"]},
    },
    "required": ["invoice_number", "total_due", "currency"],
}


def corpus_folder(directory: Path) -> None:
    directory.mkdir()
    (directory / "vault-a.pdf").write_bytes(
        pdf_with_text([["Security notes."], ["The first half of the vault code is 4417."]])
    )
    (directory / "vault-b.docx").write_bytes(
        docx_file("Memo", ["Lunch is at noon.", "The second half of the vault code is 9032."])
    )
    (directory / "menu.html").write_text("<h1>Menu</h1><p>The cafeteria serves soup.</p>")
    (directory / "blob.bin").write_bytes(binary_blob())


def invoices(directory: Path) -> None:
    directory.mkdir()
    (directory / "usd.txt").write_text(
        "ACME Supplies\nInvoice number: INV-2041\nTotal due: 1250 USD\nCurrency: USD\n"
    )
    # In euros: no conversion makes "EUR" one of the schema's currencies.
    (directory / "eur.html").write_text(
        "<h1>Invoice</h1><ul><li>Invoice number: INV-9</li><li>Total due: 80 EUR</li>"
        "<li>Currency: EUR</li></ul>"
    )
