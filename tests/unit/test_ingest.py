"""rlm_jobs.ingest: each converter on real files, encoding detection, markers, the cache."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path

import docx
import pytest
from docx.oxml.ns import qn
from docx.oxml.parser import OxmlElement

from rlm_jobs.config import Settings
from rlm_jobs.errors import DocumentError, SpecError
from rlm_jobs.ingest import (
    CONVERTERS,
    Converted,
    Format,
    IngestCache,
    Ingestor,
    converter_stamp,
    describe,
    detect,
)
from rlm_jobs.ingest.text import decode
from tests.support.documents import binary_blob, corrupt_pdf, docx_file, pdf_with_text, scanned_pdf

ING = Ingestor()  # no cache: every call converts


def convert(name: str, data: bytes) -> Converted:
    return ING.convert(name, data)


def reason(name: str, data: bytes) -> str:
    with pytest.raises(DocumentError) as caught:
        convert(name, data)
    assert str(caught.value) == f"{name}: {caught.value.reason}"
    return caught.value.reason


# ---- format detection ---------------------------------------------------------------------


def test_the_suffix_decides_and_content_decides_without_one() -> None:
    assert detect("a.PDF", b"anything") is Format.PDF
    assert detect("notes.md", b"# x") is Format.MARKDOWN
    assert detect("t.tsv", b"a\tb") is Format.TSV
    assert detect("download", pdf_with_text([["x"]])) is Format.PDF
    assert detect("attachment", docx_file("H", ["p"])) is Format.DOCX
    assert detect("page", b"  <!DOCTYPE html><html></html>") is Format.HTML
    assert detect("README", b"plain words") is Format.TEXT


def test_known_binaries_and_unsupported_suffixes_are_named() -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.txt", "x")
    assert detect("bundle", archive.getvalue()) == "a ZIP archive, not a document"
    assert detect("photo", b"\x89PNG\r\n\x1a\n....") == "a PNG image, not a document"
    assert reason("sheet.xlsx", b"PK") == "spreadsheets are not supported: export the sheet as CSV"
    assert reason("old.doc", b"x") == "legacy Word .doc is not supported: save it as .docx"


# ---- PDF ----------------------------------------------------------------------------------


def test_pdf_pages_keep_their_numbers_as_markers() -> None:
    data = pdf_with_text([["Annual report", "Revenue rose (a lot)."], [], ["Outlook: stable."]])
    converted = convert("report.pdf", data)
    assert converted.context == (
        "[page 1]\nAnnual report\nRevenue rose (a lot).\n\n"
        "[page 2]\n(no text on this page)\n\n"
        "[page 3]\nOutlook: stable."
    )
    assert converted.detail == "3 pages, 1 of them without text"
    assert describe("report.pdf", converted) == (
        "It is report.pdf (PDF, 3 pages, 1 of them without text); each page begins with a "
        'line "[page N]".'
    )


def test_a_scanned_pdf_and_a_corrupt_pdf_fail_with_reasons() -> None:
    assert reason("scan.pdf", scanned_pdf(3)) == (
        "PDF without a text layer (none of its 3 pages has text: a scanned document? "
        "run OCR on it first)"
    )
    assert reason("cut.pdf", corrupt_pdf()).startswith("corrupt or unreadable PDF (")
    assert reason("fake.pdf", b"%PDF-1.7 not really").startswith("corrupt or unreadable PDF (")


# ---- DOCX ---------------------------------------------------------------------------------


def test_docx_headings_lists_and_tables_in_document_order() -> None:
    document = docx.Document()
    document.add_heading("Contract", level=0)
    document.add_heading("Terms", level=2)
    document.add_paragraph("Renews every year.")
    document.add_paragraph("Notice in writing", style="List Bullet")
    table = document.add_table(rows=2, cols=2)
    for (r, c), text in zip(
        [(0, 0), (0, 1), (1, 0), (1, 1)], ["party", "role", "ACME", "seller"], strict=True
    ):
        table.cell(r, c).text = text
    document.add_paragraph("Signed.")
    out = io.BytesIO()
    document.save(out)
    converted = convert("c.docx", out.getvalue())
    assert converted.context == (
        "# Contract\n\n## Terms\n\nRenews every year.\n\n- Notice in writing\n\n"
        "party | role\nACME | seller\n\nSigned."
    )
    assert converted.detail == "2 headings, 1 table"


def test_docx_pages_recorded_by_word_become_markers() -> None:
    document = docx.Document()
    document.add_paragraph("First page text.")
    second = document.add_paragraph()
    # What Word writes where it laid out a new page when it last saved the file.
    run = second.add_run()
    run._r.append(OxmlElement("w:lastRenderedPageBreak"))
    second.add_run("Second page text.")
    assert second._p.xpath(".//w:lastRenderedPageBreak") and qn("w:r")
    out = io.BytesIO()
    document.save(out)
    converted = convert("paged.docx", out.getvalue())
    assert converted.context == "[page 1]\n\nFirst page text.\n\n[page 2]\n\nSecond page text."
    assert converted.detail.endswith("2 pages")
    assert describe("paged.docx", converted).endswith('each page begins with a line "[page N]".')


def test_a_broken_or_empty_docx_fails_with_a_reason() -> None:
    assert reason("x.docx", b"PK\x03\x04 not a zip").startswith("corrupt or unreadable DOCX")
    assert reason("empty.docx", docx_file(" ", [])) == "DOCX without any text"


# ---- HTML ---------------------------------------------------------------------------------


def test_html_visible_text_with_headings_lists_and_tables() -> None:
    page = b"""<!doctype html><html><head><title>Release notes</title>
    <style>p { color: red }</style><script>var secret = "hidden";</script></head>
    <body><nav>Home</nav><h1>Version 2</h1><p>Faster&nbsp;start &amp; smaller
    images.<br>Second line.</p><ul><li>one</li><li>two</li></ul>
    <table><tr><th>os</th><th>status</th></tr><tr><td>linux</td><td>ok</td></tr></table>
    <pre>  keep   spacing</pre><noscript>enable js</noscript></body></html>"""
    converted = convert("notes.html", page)
    assert converted.context == (
        "# Release notes\n\nHome\n\n# Version 2\n\nFaster start & smaller images.\n"
        "Second line.\n\n- one\n- two\n\nos | status\nlinux | ok\n\n  keep   spacing"
    )
    assert "hidden" not in str(converted.context) and "color" not in str(converted.context)
    assert converted.detail == "2 headings, titled 'Release notes'"


def test_html_declared_charset_is_used_and_a_wrong_one_is_not_trusted() -> None:
    latin = '<html><head><meta charset="iso-8859-1"></head><body><p>Crème brûlée</p></body>'
    assert convert("a.html", latin.encode("cp1252")).context == "Crème brûlée"
    lying = '<html><meta charset="utf-8"><body><p>Déjà vu à la française</p></body></html>'
    assert convert("b.html", lying.encode("cp1252")).context == "Déjà vu à la française"


def test_html_without_visible_text_fails() -> None:
    assert reason("blank.html", b"<html><body><script>x()</script></body></html>") == (
        "HTML page without visible text"
    )


# ---- text and encodings -------------------------------------------------------------------

PARAGRAPHS = {
    "cp1252": "Le café de la place était fermé ce matin. Nous avons mangé une crème brûlée "
    "à côté de la gare, près du théâtre. C'était déjà l'été.\n",
    "latin-1": "Die Größe der Straße in München überrascht viele Besucher. Für die Übergabe "
    "müssen alle Schlüssel zurückgegeben werden.\n",
    "iso8859_2": "Zażółć gęślą jaźń. Właściciel sklepu powiedział, że dostawa przyjdzie w "
    "środę rano.\n",
    "cp1251": "Привет, как дела? Это тестовый документ на русском языке, в нём несколько "
    "предложений для проверки.\n",
    "koi8-r": "Привет, как дела? Это тестовый документ на русском языке.\n",
    "shift_jis": "日本語のテキストです。これは文字コードの判定をテストするための文書です。\n",
}
LINES = {
    "cp1252": "Crème brûlée à côté du café, déjà vu.\n",
    "latin-1": "El niño comió piña.\n",
    "cp1250": "Zażółć gęślą jaźń.\n",
}


@pytest.mark.parametrize(("encoding", "text"), [*PARAGRAPHS.items(), *LINES.items()])
def test_text_in_a_legacy_encoding_is_detected_and_decoded(encoding: str, text: str) -> None:
    converted = convert("notes.txt", text.encode(encoding))
    assert converted.context == text
    assert converted.detail.startswith("decoded from ")


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        ("héllo\r\nwörld\r\n".encode(), "utf-8"),
        (b"\xef\xbb\xbf" + "héllo\nwörld\n".encode(), "utf-8"),
        ("héllo\nwörld\n".encode("utf-16"), "utf-16"),
        ("héllo\nwörld\n".encode("utf-32"), "utf-32"),
    ],
)
def test_utf_text_with_or_without_a_bom_and_newlines_normalised(data: bytes, encoding: str) -> None:
    decoded = decode(data, "x")
    assert (decoded.text, decoded.encoding) == ("héllo\nwörld\n", encoding)


def test_binary_and_empty_files_are_not_text() -> None:
    assert reason("blob.dat", binary_blob()) == "binary data, not text"
    assert reason("nul.txt", b"abc\x00\x01\x02\x03" * 200) == "binary data, not text"
    assert reason("empty.txt", b"  \n\n") == "empty file: nothing to read"


def test_markdown_is_kept_and_its_headings_counted() -> None:
    converted = convert("guide.md", b"# Guide\n\nIntro.\n\n## Install\n\nRun it.\n")
    assert converted.context == "# Guide\n\nIntro.\n\n## Install\n\nRun it.\n"
    assert converted.detail == "2 headings"


# ---- structured ---------------------------------------------------------------------------


def test_a_csv_is_a_list_of_row_dicts_with_its_delimiter_sniffed() -> None:
    data = "name;city;;name\nJosé;Málaga;x;J\nAnn;Köln\n\n".encode("cp1252")
    converted = convert("people.csv", data)
    assert converted.context == [
        {"name": "José", "city": "Málaga", "column_3": "x", "name_2": "J"},
        {"name": "Ann", "city": "Köln", "column_3": "", "name_2": ""},
    ]
    assert converted.detail.startswith(
        "2 rows with the columns name, city, column_3, name_2; every cell is a string"
    )
    assert describe("people.csv", converted).endswith(
        "; a list of row dicts, column name -> cell text."
    )


def test_a_tsv_keeps_commas_inside_cells() -> None:
    converted = convert("t.tsv", b"item\tnote\n007\tred, large\n")
    assert converted.context == [{"item": "007", "note": "red, large"}]


def test_json_and_json_lines_are_parsed() -> None:
    assert convert("a.json", b'{"k": [1, 2]}').context == {"k": [1, 2]}
    assert convert("a.json", b'"just text"').context == "just text"
    assert convert("r.jsonl", b'{"a": 1}\n\n{"a": 2}\n').context == [{"a": 1}, {"a": 2}]
    assert reason("n.json", b"42") == "a JSON context must be a string, list or object, not int"
    assert reason("bad.json", b"{").startswith("invalid JSON: ")
    assert reason("bad.jsonl", b'{"a": 1}\n{oops\n').startswith("line 2: invalid JSON")


# ---- files and limits ---------------------------------------------------------------------


def test_files_too_large_missing_or_directories(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(DocumentError, match=r"too large .* the limit is 0 MiB"):
        Ingestor(max_file_bytes=1024).convert_file(big)
    with pytest.raises(SpecError, match="no such file"):
        ING.convert_file(tmp_path / "missing.pdf")
    with pytest.raises(SpecError, match="is a directory"):
        ING.convert_file(tmp_path)


# ---- the cache ----------------------------------------------------------------------------


class CountingConverters(dict[Format, Callable[[bytes, str], Converted]]):
    """The real converters, counting their calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

        def counted(fmt: Format) -> Callable[[bytes, str], Converted]:
            def run(data: bytes, source: str) -> Converted:
                self.calls.append(source)
                return CONVERTERS[fmt](data, source)

            return run

        super().__init__({fmt: counted(fmt) for fmt in CONVERTERS})


def cached_ingestor(directory: Path) -> tuple[Ingestor, CountingConverters]:
    converters = CountingConverters()
    return Ingestor(IngestCache(directory, converter_stamp()), converters=converters), converters


def test_a_second_load_reads_the_cache_and_does_not_convert_again(tmp_path: Path) -> None:
    pdf = tmp_path / "docs" / "report.pdf"
    pdf.parent.mkdir()
    pdf.write_bytes(pdf_with_text([["Cached text."]]))
    ingestor, converters = cached_ingestor(tmp_path / "cache")

    first = ingestor.convert_file(pdf)
    again = ingestor.convert_file(pdf)
    # A fresh process (a rerun) finds it too, and so does a copy under another name.
    rerun, rerun_converters = cached_ingestor(tmp_path / "cache")
    copy = tmp_path / "docs" / "copy.pdf"
    copy.write_bytes(pdf.read_bytes())
    from_copy = rerun.convert_file(copy)

    assert converters.calls == [str(pdf)]
    assert rerun_converters.calls == []
    assert first == again == from_copy
    assert first.context == "[page 1]\nCached text."
    [entry] = (tmp_path / "cache").rglob("*.json")
    assert json.loads(entry.read_text())["context"] == "[page 1]\nCached text."


def test_changed_content_is_converted_again(tmp_path: Path) -> None:
    ingestor, converters = cached_ingestor(tmp_path / "cache")
    note = tmp_path / "note.txt"
    note.write_text("version one")
    ingestor.convert_file(note)
    note.write_text("version two")
    assert ingestor.convert_file(note).context == "version two"
    assert len(converters.calls) == 2


def test_a_damaged_cache_entry_is_converted_again_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ingestor, converters = cached_ingestor(tmp_path / "cache")
    note = tmp_path / "note.md"
    note.write_text("# Title\n")
    ingestor.convert_file(note)
    [entry] = (tmp_path / "cache").rglob("*.json")
    entry.write_text('{"format": "markdown", "context"')
    with caplog.at_level(logging.WARNING, logger="rlm_jobs.ingest.cache"):
        assert ingestor.convert_file(note).context == "# Title\n"
    assert "ignoring unreadable ingest cache entry" in caplog.text
    assert len(converters.calls) == 2
    assert json.loads(entry.read_text())["context"] == "# Title\n"


def test_failures_are_not_cached(tmp_path: Path) -> None:
    ingestor, converters = cached_ingestor(tmp_path / "cache")
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(corrupt_pdf())
    for _ in range(2):
        with pytest.raises(DocumentError):
            ingestor.convert_file(bad)
    assert len(converters.calls) == 2
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_a_cache_that_cannot_be_written_only_costs_a_conversion(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    ingestor, converters = cached_ingestor(blocker / "cache")
    note = tmp_path / "n.txt"
    note.write_text("still read")
    with caplog.at_level(logging.WARNING, logger="rlm_jobs.ingest.cache"):
        assert ingestor.convert_file(note).context == "still read"
        assert ingestor.convert_file(note).context == "still read"
    assert caplog.text.count("cannot write the ingest cache") == 1
    assert len(converters.calls) == 2


def test_settings_place_the_cache_in_the_user_cache_dir_and_can_turn_it_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RLM_JOBS_INGEST_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    settings = Settings()
    assert settings.ingest_cache_dir == tmp_path / "xdg" / "rlm-jobs" / "ingest"
    cache = Ingestor.from_settings(settings).cache
    assert cache is not None and cache.directory == settings.ingest_cache_dir
    assert Ingestor.from_settings(Settings(ingest_cache=False)).cache is None
    limited = Ingestor.from_settings(Settings(ingest_max_file_mb=1, ingest_cache=False))
    (tmp_path / "big.txt").write_bytes(b"y" * (2 * 1024 * 1024))
    with pytest.raises(DocumentError, match="RLM_JOBS_INGEST_MAX_FILE_MB"):
        limited.convert_file(tmp_path / "big.txt")
