"""Pricing: exact entries, provider wildcards, and visible zeros for unpriced models."""

from __future__ import annotations

import logging
import uuid

import pytest

from rlm_jobs.config import DEFAULT_PRICES, ModelPrice, Settings
from rlm_jobs.pricing import cost_usd, price_for

TABLE = {
    "acme/big": ModelPrice(input_per_mtok=10.0, output_per_mtok=30.0),
    "acme/*": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0),
}


def test_exact_entry_wins_over_the_wildcard() -> None:
    assert cost_usd("acme/big", 1_000_000, 1_000_000, TABLE) == pytest.approx(40.0)


def test_wildcard_prices_the_rest_of_a_provider() -> None:
    assert price_for("acme/small", TABLE) == TABLE["acme/*"]
    assert cost_usd("acme/small", 500_000, 250_000, TABLE) == pytest.approx(1.0)


def test_default_table_prices_known_models() -> None:
    expected = (1_000 * 0.15 + 2_000 * 0.60) / 1e6
    assert cost_usd("openai/gpt-4o-mini", 1_000, 2_000, DEFAULT_PRICES) == pytest.approx(expected)
    assert cost_usd("scripted/generic", 4, 2, DEFAULT_PRICES) == pytest.approx(8e-6)


def test_settings_prices_override_defaults() -> None:
    settings = Settings(
        prices={"openai/gpt-4o-mini": ModelPrice(input_per_mtok=0, output_per_mtok=1)}
    )
    assert cost_usd("openai/gpt-4o-mini", 10, 1_000_000, settings.price_table()) == 1.0


def test_unknown_model_costs_zero_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    model = f"nobody/{uuid.uuid4().hex}"
    with caplog.at_level(logging.WARNING, logger="rlm_jobs.pricing"):
        assert cost_usd(model, 100, 100, TABLE) == 0.0
        assert cost_usd(model, 100, 100, TABLE) == 0.0
    warnings = [r for r in caplog.records if model in r.getMessage()]
    assert len(warnings) == 1
    assert "RLM_JOBS_PRICES" in warnings[0].getMessage()


def test_zero_tokens_cost_nothing() -> None:
    assert cost_usd("acme/big", 0, 0, TABLE) == 0.0


def test_negative_tokens_are_a_bug() -> None:
    with pytest.raises(ValueError, match="negative"):
        cost_usd("acme/big", -1, 0, TABLE)
