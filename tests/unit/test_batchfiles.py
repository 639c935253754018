"""Loading contexts and batches from files: directories, JSONL, JSON contexts, corpora."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rlm_jobs.batchfiles import (
    documents_from_jsonl_lines,
    load_context_file,
    load_corpus,
    load_document,
    load_documents,
    parse_context,
)
from rlm_jobs.errors import DocumentError, SpecError
from rlm_jobs.ingest import Ingestor
from rlm_jobs.submitter import Document
from tests.support.documents import binary_blob, corrupt_pdf, docx_file, pdf_with_text


@pytest.fixture(autouse=True)
def _private_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loads without an ingestor read Settings(): keep their cache out of the home directory.
    monkeypatch.setenv("RLM_JOBS_INGEST_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def test_text_files_are_text_and_json_files_are_json(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text('{"not": "parsed"}')
    (tmp_path / "b.json").write_text('{"parts": ["x", "y"]}')
    assert load_context_file(tmp_path / "a.txt") == '{"not": "parsed"}'
    assert load_context_file(tmp_path / "b.json") == {"parts": ["x", "y"]}


def test_a_json_context_must_be_str_list_or_dict() -> None:
    with pytest.raises(SpecError, match="must be a string, list or object, not int"):
        parse_context("42", as_json=True, source="x.json")
    with pytest.raises(SpecError, match=re.escape("x.json: invalid JSON")):
        parse_context("{", as_json=True, source="x.json")


def test_missing_and_binary_files_are_reported_by_name(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_context_file(tmp_path / "missing.txt")
    (tmp_path / "bin.dat").write_bytes(binary_blob())
    with pytest.raises(DocumentError, match=re.escape("bin.dat: binary data, not text")):
        load_context_file(tmp_path / "bin.dat")


def test_a_directory_gives_one_document_per_regular_file_sorted(tmp_path: Path) -> None:
    for name in ("b.txt", "a.txt", "c.json"):
        (tmp_path / name).write_text(json.dumps(name) if name.endswith(".json") else name)
    (tmp_path / ".gitkeep").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.txt").write_text("nested")
    docs = load_documents(tmp_path)
    assert [d.id for d in docs] == ["a.txt", "b.txt", "c.json"]
    assert [d.context for d in docs] == ["a.txt", "b.txt", "c.json"]
    assert all(d.query is None for d in docs)


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="holds no documents"):
        load_documents(tmp_path)


def test_jsonl_rows_take_context_or_text_and_an_optional_query() -> None:
    docs = documents_from_jsonl_lines(
        [
            '{"id": "x", "context": ["a", "b"]}',
            '{"id": 7, "text": "plain", "query": "own question"}',
        ]
    )
    assert [(d.id, d.context, d.query) for d in docs] == [
        ("x", ["a", "b"], None),
        ("7", "plain", "own question"),
    ]


def test_a_row_without_id_gets_its_line_number_counting_blank_lines() -> None:
    docs = documents_from_jsonl_lines(['{"text": "one"}', "", '{"text": "three"}'])
    assert [d.id for d in docs] == ["1", "3"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "b.jsonl:2: invalid JSON"),
        ('["a"]', "b.jsonl:2: a row must be a JSON object"),
        ('{"id": "y"}', "b.jsonl:2: a row needs exactly one of 'context' or 'text'"),
        ('{"id": "y", "text": "t", "context": "c"}', "exactly one of"),
        ('{"id": "y", "txt": "t"}', "b.jsonl:2: unknown field"),
        ('{"id": "y", "text": 3}', "'text' must be a string, list or object, not int"),
        ('{"id": true, "text": "t"}', "'id' must be a string or an integer"),
        ('{"id": "y", "text": "t", "query": ""}', "b.jsonl:2: query"),
        ('{"id": "x", "text": "again"}', "b.jsonl:2: id 'x' already used on line 1"),
    ],
)
def test_a_malformed_line_is_named_by_number(line: str, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        documents_from_jsonl_lines(['{"id": "x", "text": "ok"}', line], "b.jsonl")


def test_jsonl_file_is_loaded_and_raw_line_separators_in_strings_survive(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    row = {"id": "u", "text": "before\u2028after"}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    [doc] = load_documents(path)
    assert doc.context == "before\u2028after"


def test_paths_that_are_not_batches_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file or directory"):
        load_documents(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SpecError, match="neither a directory nor a JSONL file"):
        load_documents(tmp_path / "notes.txt")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(SpecError, match="holds no documents"):
        load_documents(tmp_path / "empty.jsonl")


# ---- documents from real formats --------------------------------------------------------


def test_a_directory_of_mixed_formats_keeps_the_unreadable_ones_with_their_reasons(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.pdf").write_bytes(pdf_with_text([["Page one."], ["Page two."]]))
    (tmp_path / "b.docx").write_bytes(docx_file("Memo", ["Body text."]))
    (tmp_path / "c.txt").write_bytes("Crème brûlée à côté du café, déjà vu.\n".encode("cp1252"))
    (tmp_path / "d.pdf").write_bytes(corrupt_pdf())
    (tmp_path / "e.bin").write_bytes(binary_blob())
    docs = {d.id: d for d in load_documents(tmp_path, ingestor=Ingestor())}
    assert sorted(docs) == ["a.pdf", "b.docx", "c.txt", "d.pdf", "e.bin"]
    assert docs["a.pdf"].context == "[page 1]\nPage one.\n\n[page 2]\nPage two."
    assert (
        docs["a.pdf"].description is not None
        and "a.pdf (PDF, 2 pages)" in docs["a.pdf"].description
    )
    assert docs["b.docx"].context == "# Memo\n\nBody text."
    assert docs["c.txt"].context == "Crème brûlée à côté du café, déjà vu.\n"
    assert docs["d.pdf"].context is None and docs["d.pdf"].error is not None
    assert docs["d.pdf"].error.startswith("corrupt or unreadable PDF")
    assert docs["e.bin"].error == "binary data, not text"


def test_load_document_names_the_file_and_fails_loudly(tmp_path: Path) -> None:
    (tmp_path / "r.pdf").write_bytes(pdf_with_text([["Hello."]]))
    doc = load_document(tmp_path / "r.pdf", ingestor=Ingestor())
    assert (doc.id, doc.context) == ("r.pdf", "[page 1]\nHello.")
    (tmp_path / "broken.pdf").write_bytes(corrupt_pdf())
    with pytest.raises(DocumentError, match=re.escape("broken.pdf: corrupt or unreadable PDF")):
        load_document(tmp_path / "broken.pdf", ingestor=Ingestor())
    with pytest.raises(SpecError, match="is a directory"):
        load_document(tmp_path, ingestor=Ingestor())


def test_a_corpus_is_a_dict_of_documents_and_tells_the_model_what_was_left_out(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.pdf").write_bytes(pdf_with_text([["Alpha."]]))
    (tmp_path / "b.csv").write_text("name,city\nAnn,Oslo\n")
    (tmp_path / "z.bin").write_bytes(binary_blob())
    corpus = load_corpus(tmp_path, ingestor=Ingestor())
    assert corpus.context == {
        "a.pdf": "[page 1]\nAlpha.",
        "b.csv": [{"name": "Ann", "city": "Oslo"}],
    }
    assert corpus.skipped == {"z.bin": "binary data, not text"}
    text = corpus.description or ""
    assert text.startswith("It is a corpus of 2 documents from the folder")
    assert "a dict from file name to content" in text and '"[page N]"' in text
    assert "lists of row dicts" in text
    assert "a.pdf (PDF, 1 page, 15 characters)" in text
    assert "b.csv (CSV table, 1 rows with the columns name, city" in text
    assert "1 file could not be read and is not in it: z.bin (binary data, not text)." in text


def test_a_corpus_with_nothing_readable_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "z.bin").write_bytes(binary_blob())
    with pytest.raises(
        DocumentError, match=re.escape("no document in it can be read (z.bin: binary")
    ):
        load_corpus(tmp_path, ingestor=Ingestor())


def test_a_document_has_a_context_or_an_error_never_both_or_neither() -> None:
    with pytest.raises(ValueError, match="a context, or an error"):
        Document(id="x")
    with pytest.raises(ValueError, match="a context, or an error"):
        Document(id="x", context="text", error="unreadable")
    assert Document(id="x", error="corrupt").context is None
