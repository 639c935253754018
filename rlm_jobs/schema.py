"""Structured answers: a JSON Schema the final answer must match.

The schema travels in the job spec (``JobSpec.answer_schema``), checked there with
``check_schema``; ``problems`` says what is wrong with an answer. The loop's
``rlm_jobs.answers.AnswerGate`` decides what a rejected answer costs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from rlm_jobs.errors import JobStopped, SpecError
from rlm_jobs.status import JobStatus

# A schema describes fields, it is not data; and the model reads it on every turn.
MAX_SCHEMA_BYTES = 64 * 1024
# Problems listed to the model (and in a failed job's reason) at most; the first few are
# what a fix needs.
MAX_PROBLEMS = 10
_FENCE = re.compile(r"\A```(?:json)?\s*\n(?P<body>.*)\n```\s*\Z", re.DOTALL)


def check_schema(schema: Any) -> dict[str, Any]:
    """``schema`` if it is a usable JSON Schema; ValueError saying why not (for pydantic)."""
    if not isinstance(schema, dict):
        raise ValueError(f"a JSON Schema must be an object, not {type(schema).__name__}")
    size = len(json.dumps(schema, ensure_ascii=False).encode())
    if size > MAX_SCHEMA_BYTES:
        raise ValueError(f"the schema is {size:,} bytes; at most {MAX_SCHEMA_BYTES:,} are allowed")
    remote = sorted(set(_remote_refs(schema)))
    if remote:
        raise ValueError(
            f"only local $refs (#/...) are allowed, nothing is fetched: {', '.join(remote[:3])}"
        )
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the top level"
        raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
    return schema


def _remote_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                if not value.startswith("#"):
                    yield value
            else:
                yield from _remote_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _remote_refs(item)


def load_schema_file(path: Path) -> dict[str, Any]:
    """A JSON Schema from a file, checked; SpecError naming the file otherwise."""
    try:
        size = path.stat().st_size
        if size > MAX_SCHEMA_BYTES:
            raise SpecError(f"{path}: the schema is {size:,} bytes; at most {MAX_SCHEMA_BYTES:,}")
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"no such schema file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the schema {path}: {exc}") from None
    try:
        schema = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: the schema is not JSON: {exc}") from None
    try:
        return check_schema(schema)
    except ValueError as exc:
        raise SpecError(f"{path}: {exc}") from None


def parse_answer(answer: str) -> Any:
    """The JSON value of a final answer; a fenced ```json block is accepted too."""
    text = answer.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group("body")
    return json.loads(text)


def problems(schema: dict[str, Any], answer: str) -> tuple[Any, list[str]]:
    """The parsed answer and what is wrong with it (nothing: it matches)."""
    try:
        value = parse_answer(answer)
    except (json.JSONDecodeError, RecursionError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        return None, [f"the answer is not JSON ({why}); finish with FINAL(json.dumps(value))"]
    validator: Validator = validator_for(schema, default=Draft202012Validator)(
        schema, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    try:
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    except Exception as exc:  # a schema can still fail in use: a $ref to a missing anchor
        raise JobStopped(JobStatus.FAILED, f"the answer schema cannot be used: {exc}") from exc
    found = [f"at {e.json_path}: {_short(e.message)}" for e in errors[:MAX_PROBLEMS]]
    if len(errors) > MAX_PROBLEMS:
        found.append(f"... and {len(errors) - MAX_PROBLEMS} more")
    return value, found


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
