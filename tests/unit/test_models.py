import pytest
from pydantic import ValidationError

from rlm_jobs.models import JobResult, JobSpec, JobStatus, Limits, UsageMeter

SHA = "a" * 64


def spec(**extra: object) -> JobSpec:
    fields: dict[str, object] = {
        "query": "q",
        "context": {"sha256": SHA, "kind": "str", "length": 1, "total_chars": 1},
        "model": "scripted/generic",
    }
    fields.update(extra)
    return JobSpec.model_validate(fields)


def test_spec_rejects_unknown_fields_and_bad_model_names() -> None:
    with pytest.raises(ValidationError, match="extra"):
        spec(qurey="typo")
    with pytest.raises(ValidationError, match="pattern"):
        spec(model="gpt4")
    with pytest.raises(ValidationError):
        spec(limits={"max_iterations": 0})


def test_child_meter_counts_into_parent_and_parent_caps_bind_children() -> None:
    root = UsageMeter(max_tokens=100)
    child = UsageMeter(parent=root)
    child.add("m/a", 40, 10, 0.5)
    root.add("m/b", 30, 0, 0.1)
    assert child.snapshot().total_tokens == 50
    assert root.snapshot().total_tokens == 80
    assert root.snapshot().cost_usd == pytest.approx(0.6)
    assert child.exceeded() is None
    child.add("m/a", 21, 0, 0.0)
    over = child.exceeded()
    assert over is not None and over[0] is JobStatus.TOKEN_LIMIT


def test_budget_cap_reports_its_own_status() -> None:
    meter = UsageMeter(max_cost_usd=0.01)
    meter.add("m/a", 1, 1, 0.02)
    over = meter.exceeded()
    assert over is not None and over[0] is JobStatus.BUDGET_EXCEEDED and "$" in over[1]


def test_results_need_a_finished_status() -> None:
    with pytest.raises(ValidationError, match="finished"):
        JobResult(job_id="j", status=JobStatus.RUNNING)
    assert JobResult(job_id="j", status=JobStatus.CANCELLED).status.finished


def test_limits_defaults_are_sane() -> None:
    limits = Limits()
    assert limits.max_output_chars == 20_000 and limits.max_iterations >= 10
