"""The dry run's estimate, checked against the formula worked out by hand."""

from __future__ import annotations

import math

from rlm_jobs import prompts
from rlm_jobs.config import DEFAULT_PRICES, ModelPrice
from rlm_jobs.models import ContextRef, Limits
from rlm_jobs.providers.dryrun import estimate_batch, render
from rlm_jobs.providers.estimate import estimate_document, message_tokens
from rlm_jobs.submitter import Document

QUERY = "What is the code?"  # 17 characters: 5 tokens


def base_tokens(kind: str, length: int, chars: int) -> int:
    """System prompt + first message, four characters a token, each rounded up."""
    ref = ContextRef(sha256="0" * 64, kind=kind, length=length, total_chars=chars)  # type: ignore[arg-type]
    return math.ceil(len(prompts.system_prompt(ref)) / 4) + math.ceil(
        len(prompts.first_user_message(QUERY, ref)) / 4
    )


def test_a_request_is_four_characters_a_token_rounded_up() -> None:
    assert message_tokens([{"role": "user", "content": "abcde"}]) == 2
    assert (
        message_tokens([{"role": "system", "content": "abc"}, {"role": "user", "content": "d"}])
        == 1
    )


def test_a_document_is_read_once_by_sub_calls_and_takes_four_root_turns() -> None:
    est = estimate_document(
        "a",
        "x" * 100_000,
        QUERY,
        model="scripted/generic",
        sub_model="scripted/generic",
        max_iterations=30,
        prices=DEFAULT_PRICES,
    )
    base = base_tokens("str", 100_000, 100_000)
    # 5 chunks of 20,000 characters: 25,000 tokens of context + the 5-token query each.
    assert est.sub_input_tokens == 25_000 + 5 * 5
    assert est.sub_output_tokens == 5 * 100
    # Turns 1..4 re-read the base plus 1,000 tokens per earlier turn: 0 + 1 + 2 + 3 = 6.
    assert est.root_input_tokens == 4 * base + 6 * 1_000
    assert est.root_output_tokens == 4 * 500
    # scripted/* costs $1 in, $2 out per million tokens.
    expected = (4 * base + 6_000 + 25_025) * 1e-6 + (2_000 + 500) * 2e-6
    assert math.isclose(est.cost_usd, expected, rel_tol=1e-12)
    assert est.tokens == 4 * base + 6_000 + 2_000 + 25_025 + 500


def test_fewer_iterations_mean_fewer_root_turns_and_prices_are_per_model() -> None:
    prices = {
        "acme/root": ModelPrice(input_per_mtok=10, output_per_mtok=20),
        "acme/sub": ModelPrice(input_per_mtok=1, output_per_mtok=0),
    }
    context = ["ab" * 10, "cd" * 15]  # a list of 2 items, 50 characters
    est = estimate_document(
        "b",
        context,
        QUERY,
        model="acme/root",
        sub_model="acme/sub",
        max_iterations=2,
        prices=prices,
    )
    base = base_tokens("list", 2, 50)
    assert est.root_input_tokens == 2 * base + 1_000
    assert est.root_output_tokens == 1_000
    assert est.sub_input_tokens == math.ceil(50 / 4) + 5 and est.sub_output_tokens == 100
    expected = ((2 * base + 1_000) * 10 + 1_000 * 20 + (13 + 5) * 1) / 1e6
    assert math.isclose(est.cost_usd, expected, rel_tol=1e-12)


def test_the_report_lists_documents_totals_and_what_is_unpriced() -> None:
    docs = [Document(id="one.txt", context="y" * 40_000), Document(id="two.txt", context="z" * 10)]
    estimate = estimate_batch(
        docs,
        QUERY,
        model="acme/unknown",
        sub_model="scripted/generic",
        limits=Limits(),
        prices=DEFAULT_PRICES,
    )
    assert [d.chars for d in estimate.documents] == [40_000, 10]
    assert estimate.unpriced == ["acme/unknown"]
    # Only the sub-model is priced: 10,000 + 2 * 5 tokens in, 200 out; then 3 + 5 in, 100 out.
    assert math.isclose(estimate.cost_usd, (10_010 + 8) * 1e-6 + 300 * 2e-6, rel_tol=1e-12)
    lines = render(estimate, batch_max_cost_usd=0.001, batch_max_tokens=10**9)
    text = "\n".join(lines)
    assert "one.txt" in text and "40,000" in text and f"{estimate.tokens:,}" in text
    assert "no price for acme/unknown" in text
    assert "over the batch budget of $0.0010" in text
    assert "within the batch cap of 1,000,000,000 tokens" in text
