"""Provider-control settings, limits, cache keys and usage accounting (no I/O)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rlm_jobs.config import RateLimit, Settings
from rlm_jobs.models import Limits, Usage
from rlm_jobs.providers.budget import BudgetState
from rlm_jobs.providers.cache import request_digest


def test_rate_limits_come_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "RLM_JOBS_RATE_LIMITS",
        '{"openai/gpt-4o-mini": {"rpm": 500, "tpm": 200000}, "anthropic": {"tpm": 40000},'
        ' "scripted": {}}',
    )
    limits = Settings().rate_limits
    assert limits["openai/gpt-4o-mini"] == RateLimit(rpm=500, tpm=200_000)
    assert limits["anthropic"] == RateLimit(tpm=40_000)
    assert limits["scripted"] == RateLimit()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ('{"OpenAI models": {"rpm": 5}}', "keyed by 'provider/name' or 'provider'"),
        ('{"openai": {"rps": 5}}', "rps"),
        ('{"openai": {"rpm": 0}}', "greater than 0"),
    ],
)
def test_bad_rate_limits_are_refused(
    monkeypatch: pytest.MonkeyPatch, raw: str, problem: str
) -> None:
    monkeypatch.setenv("RLM_JOBS_RATE_LIMITS", raw)
    with pytest.raises(ValidationError, match=problem):
        Settings()


def test_the_cache_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().cache is False and Limits().cache is None
    monkeypatch.setenv("RLM_JOBS_CACHE", "true")
    assert Settings().cache is True
    assert Settings().cache_ttl_s == 7 * 24 * 3600


def test_jobs_have_a_sub_call_cap_by_default() -> None:
    assert Limits().max_subcalls == 1000
    assert Limits(max_subcalls=0).max_subcalls == 0
    with pytest.raises(ValidationError):
        Limits(max_subcalls=-1)


def test_a_request_digest_covers_model_messages_and_output_cap() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    digest = request_digest("scripted/generic", messages, 100)  # type: ignore[arg-type]
    assert digest == request_digest("scripted/generic", [dict(m) for m in messages], 100)  # type: ignore[misc]
    others = {
        request_digest("scripted/needle", messages, 100),  # type: ignore[arg-type]
        request_digest("scripted/generic", messages, 101),  # type: ignore[arg-type]
        request_digest("scripted/generic", [messages[1], messages[0]], 100),  # type: ignore[list-item]
        request_digest("scripted/generic", [{"role": "user", "content": "s"}, messages[1]], 100),  # type: ignore[list-item]
    }
    assert digest not in others and len(others) == 4


def test_cached_calls_are_counted_apart_and_cost_nothing() -> None:
    usage = Usage()
    usage.add("m/a", 10, 5, 0.5)
    usage.add_cached("m/a", 0.25)
    usage.add_cached("m/b", 0.125)
    assert (usage.calls, usage.total_tokens, usage.cost_usd) == (1, 15, 0.5)
    assert (usage.cached_calls, usage.cached_cost_usd) == (2, 0.375)
    merged = Usage()
    merged.merge(usage)
    merged.merge(usage)
    summary = merged.summary()
    assert summary["cached_calls"] == 4 and summary["cached_cost_usd"] == 0.75
    assert summary["by_model"]["m/b"]["cached_calls"] == 2 and summary["calls"] == 2


def test_a_budget_is_spent_once_either_cap_is_reached() -> None:
    def state(cost: float, tokens: int) -> BudgetState:
        return BudgetState("b1", max_cost_usd=1.0, max_tokens=100, cost_usd=cost, tokens=tokens)

    assert state(0.99, 99).exhausted() is None
    assert "spent $1.000000 of its $1.000000 budget" in (state(1.0, 0).exhausted() or "")
    assert "used 100 of its 100 tokens" in (state(0.0, 100).exhausted() or "")
    assert BudgetState("b", None, None, 5.0, 5).exhausted() is None
