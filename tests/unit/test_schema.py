"""Structured answers: schema checks at the boundary, answer validation, bounded retries."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from rlm_jobs import prompts
from rlm_jobs.answers import AnswerGate
from rlm_jobs.errors import JobStopped, SpecError
from rlm_jobs.models import ContextRef, JobSpec, JobStatus, Limits
from rlm_jobs.schema import (
    MAX_SCHEMA_BYTES,
    check_schema,
    load_schema_file,
    parse_answer,
    problems,
)
from rlm_jobs.testing.policies.base import parse_schema

INVOICE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "number": {"type": "string"},
        "total": {"type": "integer", "minimum": 0},
        "due": {"type": "string", "format": "date"},
    },
    "required": ["number", "total"],
    "additionalProperties": False,
}
REF = ContextRef(sha256="0" * 64, kind="str", length=3, total_chars=3)


# ---- the schema at the boundary -------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ([], "a JSON Schema must be an object, not list"),
        ({"type": "objekt"}, "not a valid JSON Schema at type:"),
        (
            {"properties": {"a": {"minimum": "zero"}}},
            "not a valid JSON Schema at properties/a/minimum",
        ),
        ({"$ref": "https://example.com/s.json"}, "only local $refs (#/...) are allowed"),
        ({"description": "x" * MAX_SCHEMA_BYTES}, "at most 65,536 are allowed"),
    ],
)
def test_unusable_schemas_are_refused_with_the_reason(schema: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_schema(schema)


def test_the_job_spec_carries_a_checked_schema() -> None:
    spec = JobSpec(query="q", context=REF, model="scripted/fields", answer_schema=INVOICE)
    assert JobSpec.model_validate_json(spec.model_dump_json()).answer_schema == INVOICE
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        JobSpec(query="q", context=REF, model="scripted/x", answer_schema={"type": 3})


def test_schema_files_are_read_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "s.json"
    good.write_text(json.dumps(INVOICE))
    assert load_schema_file(good) == INVOICE
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SpecError, match=re.escape("bad.json: the schema is not JSON")):
        load_schema_file(tmp_path / "bad.json")
    (tmp_path / "wrong.json").write_text('{"type": "objekt"}')
    with pytest.raises(SpecError, match=re.escape("wrong.json: not a valid JSON Schema")):
        load_schema_file(tmp_path / "wrong.json")
    with pytest.raises(SpecError, match="no such schema file"):
        load_schema_file(tmp_path / "none.json")
    (tmp_path / "huge.json").write_text(json.dumps({"description": "x" * MAX_SCHEMA_BYTES}))
    with pytest.raises(SpecError, match="at most 65,536"):
        load_schema_file(tmp_path / "huge.json")


# ---- answers ------------------------------------------------------------------------------


def test_answers_parse_as_json_also_inside_a_json_fence() -> None:
    assert parse_answer(' {"a": 1} ') == {"a": 1}
    assert parse_answer('```json\n{"a": [1, 2]}\n```') == {"a": [1, 2]}
    assert parse_answer("```\n[true]\n```") == [True]


def test_problems_name_the_place_and_the_rule() -> None:
    value, found = problems(INVOICE, '{"number": 7, "total": -1, "due": "soon", "x": 1}')
    assert value == {"number": 7, "total": -1, "due": "soon", "x": 1}
    assert found == [
        "at $: Additional properties are not allowed ('x' was unexpected)",
        "at $.due: 'soon' is not a 'date'",
        "at $.number: 7 is not of type 'string'",
        "at $.total: -1 is less than the minimum of 0",
    ]
    assert problems(INVOICE, '{"number": "A1", "total": 3}') == (
        {"number": "A1", "total": 3},
        [],
    )
    _, not_json = problems(INVOICE, "The total is 3.")
    assert not_json == [
        "the answer is not JSON (Expecting value); finish with FINAL(json.dumps(value))"
    ]


def test_the_gate_passes_everything_without_a_schema() -> None:
    gate = AnswerGate(None, max_retries=2)
    assert gate.review("free text") is None
    assert gate.value is None


def test_the_gate_asks_for_fixes_then_accepts_and_keeps_the_value() -> None:
    gate = AnswerGate(INVOICE, max_retries=2)
    feedback = gate.review('{"number": "A1", "total": "12"}')
    assert feedback is not None
    assert feedback.startswith(prompts.SCHEMA_REJECTED)
    assert "- at $.total: '12' is not of type 'integer'" in feedback
    assert "(fix 1 of 2)." in feedback and 'answer["ready"] = False' in feedback
    assert gate.value is None
    assert gate.review('{"number": "A1", "total": 12}') is None
    assert gate.value == {"number": "A1", "total": 12}


def test_the_gate_fails_the_job_once_the_retries_are_spent() -> None:
    gate = AnswerGate.for_spec(
        JobSpec(
            query="q", context=REF, model="scripted/fields", answer_schema=INVOICE,
            limits=Limits(max_schema_retries=1),
        )
    )  # fmt: skip
    assert gate.review('{"total": 1}') is not None
    with pytest.raises(JobStopped) as stopped:
        gate.review('{"total": 1}')
    assert stopped.value.status is JobStatus.FAILED
    assert stopped.value.reason == (
        "the final answer does not match the answer schema after 1 retry: "
        "at $: 'number' is a required property"
    )


def test_a_schema_that_fails_in_use_fails_the_job() -> None:
    gate = AnswerGate({"$ref": "#/$defs/missing"}, max_retries=2)
    with pytest.raises(JobStopped, match="the answer schema cannot be used"):
        gate.review("{}")


# ---- what the model reads -------------------------------------------------------------------


def test_the_first_message_shows_the_description_and_the_schema_before_the_query() -> None:
    ref = REF.model_copy(update={"description": "It is a.pdf (PDF, 1 page)."})
    text = prompts.first_user_message("How much?", ref, None, INVOICE)
    assert text.startswith(
        "The variable `context` holds a string of 3 characters. It is a.pdf (PDF, 1 page). "
    )
    assert "FINAL(json.dumps(value))" in text
    assert text.endswith(f"{prompts.QUERY_HEADER}How much?")
    assert parse_schema(text) == INVOICE
    plain = prompts.first_user_message("How much?", REF)
    assert prompts.SCHEMA_HEADER not in plain and parse_schema(plain) is None
