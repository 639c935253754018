"""HTML: the visible text, headings as Markdown ``#`` lines, lists and table rows kept.

The standard library's parser, not an HTML-to-Markdown package: it is lenient with broken
markup, has no dependencies, and the mapping we need (blocks, headings, list items, table
cells; no scripts, styles or head) is a few dozen lines. html2text is GPL; markdownify
needs BeautifulSoup; boilerplate removers (trafilatura) drop text a question may need.
"""

from __future__ import annotations

import codecs
import re
from html.parser import HTMLParser

from rlm_jobs.errors import DocumentError
from rlm_jobs.ingest.base import Converted
from rlm_jobs.ingest.formats import Format
from rlm_jobs.ingest.text import decode

# Elements whose content is never shown as text.
_HIDDEN = frozenset(
    {"script", "style", "noscript", "template", "svg", "iframe", "object", "canvas", "head"}
)
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "div", "dl",
        "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "main",
        "nav", "ol", "p", "pre", "section", "table", "tbody", "thead", "tfoot", "ul",
    }
)  # fmt: skip
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_CELLS = frozenset({"td", "th"})
# Lines of these kinds follow each other without a blank line between them.
_TIGHT = frozenset({"li", "tr"})
_SPACE = re.compile(r"\s+")
# Where a <br> broke a line: a character no page holds, so whitespace folding keeps it.
_BR = "\x00"
# Browsers read these labels as windows-1252 (WHATWG Encoding), and so do we.
_CP1252_LABELS = frozenset({"iso-8859-1", "iso8859-1", "latin1", "latin-1", "ascii", "us-ascii"})
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([a-zA-Z0-9_.:-]+)", re.I)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[tuple[str, str]] = []  # (kind, text)
        self.title = ""
        self.headings = 0
        self._pieces: list[str] = []
        self._kind = "p"
        self._prefix = ""
        self._hidden = 0
        self._pre = 0
        self._in_title = False
        self._row_cells = 0

    # ---- blocks ---------------------------------------------------------------------

    def _flush(self) -> None:
        raw = "".join(self._pieces)
        if self._pre:
            text = raw.strip("\n")
        else:
            text = "\n".join(t for t in (_SPACE.sub(" ", p).strip() for p in raw.split(_BR)) if t)
        if text and text.strip(" |"):
            self.lines.append((self._kind, self._prefix + text))
            if self._prefix.startswith("#"):
                self.headings += 1
        self._pieces = []
        self._kind, self._prefix = "p", ""

    def _start(self, kind: str, prefix: str = "") -> None:
        self._flush()
        self._kind, self._prefix = kind, prefix

    # ---- parser callbacks -----------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag == "body":
            self._hidden = 0  # a head nobody closed ends where the body begins
        if tag in _HIDDEN:
            self._hidden += 1
        elif tag in _HEADINGS:
            self._start("h", "#" * _HEADINGS[tag] + " ")
        elif tag == "li":
            self._start("li", "- ")
        elif tag == "tr":
            self._start("tr")
            self._row_cells = 0
        elif tag in _CELLS:
            if self._row_cells:
                self._pieces.append(" | ")
            self._row_cells += 1
        elif tag == "br":
            self._pieces.append("\n" if self._pre else _BR)
        elif tag in _BLOCKS:
            self._start("p")
            if tag == "pre":
                self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _HEADINGS or tag in ("li", "tr") or tag in _BLOCKS:
            self._flush()
            if tag == "pre":
                self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._hidden:
            self._pieces.append(data.replace(_BR, ""))

    def text(self) -> str:
        self._flush()
        out: list[str] = []
        previous = ""
        for kind, line in self.lines:
            if out:
                out.append("\n" if kind == previous and kind in _TIGHT else "\n\n")
            out.append(line)
            previous = kind
        return "".join(out)


def html_to_text(markup: str) -> tuple[str, str, int]:
    """(text, title, number of headings) of an HTML document."""
    parser = _Text()
    parser.feed(markup)
    parser.close()
    title = _SPACE.sub(" ", parser.title).strip()
    return parser.text(), title, parser.headings


def convert_html(data: bytes, source: str) -> Converted:
    text, title, headings = html_to_text(_decode_html(data, source))
    if title and not text.startswith(f"# {title}"):
        text = f"# {title}\n\n{text}" if text else f"# {title}"
        headings += 1
    if not text.strip():
        raise DocumentError(source, "HTML page without visible text")
    detail = f"{headings} heading{'s' if headings != 1 else ''}"
    return Converted(text, Format.HTML, detail + (f", titled {title!r}" if title else ""))


def _decode_html(data: bytes, source: str) -> str:
    """A declared charset is believed when Python knows it and it decodes the bytes."""
    declared = _META_CHARSET.search(data[:4096])
    has_bom = data.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    if declared and not has_bom:
        name = declared.group(1).decode("ascii", "replace").lower()
        name = "cp1252" if name in _CP1252_LABELS else name
        try:
            return data.decode(name).replace("\r\n", "\n")
        except (LookupError, UnicodeDecodeError):
            pass  # a wrong declaration is common: detect instead
    return decode(data, source).text
