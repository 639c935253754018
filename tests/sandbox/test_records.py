"""sandbox.records: the shared records, built and checked without dataclasses."""

from __future__ import annotations

from typing import ClassVar

import pytest

from sandbox import wire
from sandbox.records import CellResult, Record, SubcallResult, ToolSpec, WireError, field, not_run


class _Numbers(Record):
    KIND: ClassVar[str] = "numbers"

    count: int = field(ge=0, le=10)
    names: list[str] = field(default_factory=list, max_len=2)
    label: str | None = None


def test_fields_come_from_annotations_with_defaults_and_classvars_left_out() -> None:
    made = _Numbers(count=3)
    assert made.to_dict() == {"count": 3, "names": [], "label": None}
    # A factory gives each record its own list.
    assert _Numbers(count=1).names is not made.names
    with pytest.raises(TypeError, match="missing required field 'count'"):
        _Numbers()
    with pytest.raises(TypeError, match="unexpected field 'KIND'"):
        _Numbers(count=1, KIND="other")


def test_values_are_checked_when_built_with_the_field_and_index_named() -> None:
    with pytest.raises(WireError, match="count: expected an integer, got bool"):
        _Numbers(count=True)
    with pytest.raises(WireError, match="count: must be <= 10"):
        _Numbers(count=11)
    with pytest.raises(WireError, match=r"names\[1\]: expected a string, got int"):
        _Numbers(count=1, names=["a", 2])
    with pytest.raises(WireError, match="names: must have at most 2 items"):
        _Numbers(count=1, names=["a", "b", "c"])
    with pytest.raises(WireError, match="cost_usd: expected a finite number"):
        SubcallResult(ok=True, text="x", cost_usd=float("nan"))
    with pytest.raises(WireError, match="name: must have at least 1 items"):
        ToolSpec(name="")


def test_records_are_frozen_comparable_and_replace_checks_again() -> None:
    result = SubcallResult(ok=True, text="a")
    with pytest.raises(AttributeError, match="frozen"):
        result.text = "b"  # type: ignore[misc]
    assert result == SubcallResult(ok=True, text="a")
    assert result != SubcallResult(ok=True, text="b")
    assert hash(result) == hash(SubcallResult(ok=True, text="a"))
    changed = result.replace(worker="w1")
    assert (changed.text, changed.worker, result.worker) == ("a", "w1", "")
    with pytest.raises(WireError, match="input_tokens: expected an integer"):
        result.replace(input_tokens="3")
    assert "SubcallResult(ok=True, text='a'" in repr(result)


def test_nested_records_round_trip_through_json() -> None:
    done = wire.CellDone(
        seq=1, id="m1", reply_to="c1", result=CellResult(stdout="out", stderr="", final="42")
    )
    decoded = wire.decode_whole_to_host(done.to_json())
    assert decoded == done
    assert isinstance(decoded, wire.CellDone) and isinstance(decoded.result, CellResult)
    load = wire.LoadContext(
        seq=2, id="m2", context_key="ctx", seed=7, tools=[ToolSpec(name="lookup", doc="d")]
    )
    body, published = wire.payload_to_sandbox(load)
    assert body == published
    assert '"type":"load_context"' in body and '"tools":[{"name":"lookup"' in body


def test_decoding_rejects_unknown_and_missing_fields_as_wire_errors() -> None:
    with pytest.raises(WireError, match="unexpected field 'extra'"):
        SubcallResult.from_dict({"ok": True, "text": "a", "extra": 1})
    with pytest.raises(WireError, match="missing required field 'text'"):
        SubcallResult.from_dict({"ok": True})
    with pytest.raises(WireError, match="must be a JSON object"):
        SubcallResult.from_dict(["ok"])
    # Lone surrogates from JSON are replaced: nothing downstream could encode them.
    cleaned = SubcallResult.from_json('{"ok": true, "text": "a\\ud800b"}')
    assert cleaned.text.encode() == "a\ufffd\ufffd\ufffdb".encode()


def test_not_run_is_a_failed_result_with_the_one_prefix() -> None:
    result = not_run("the job stopped")
    assert (result.ok, result.text) == (False, "Error: not run: the job stopped")
