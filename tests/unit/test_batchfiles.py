"""Loading contexts and batches from files: directories, JSONL, JSON contexts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rlm_jobs.batchfiles import (
    documents_from_jsonl_lines,
    load_context_file,
    load_documents,
    parse_context,
)
from rlm_jobs.errors import SpecError


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
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecError, match=re.escape("bin.dat is not UTF-8")):
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
