"""What a call costs, from a price table of USD per million tokens.

Lookup order: the exact ``"provider/model"`` entry, then ``"provider/*"``.

A model with no price costs 0.0 instead of raising: the tokens are already spent, and
failing the job afterwards would throw away an answer the user paid for. A silent zero
would hide spend from budgets, though, so the first time each unpriced model is seen in a
process we log a warning naming it and the setting that fixes it (``RLM_JOBS_PRICES``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from rlm_jobs.config import ModelPrice
from rlm_jobs.models import model_provider

__all__ = ["cost_usd", "price_for"]

_log = logging.getLogger(__name__)
_warned_lock = threading.Lock()
_warned: set[str] = set()


def price_for(model_name: str, table: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """The price of ``model_name``: its own entry, else its provider's wildcard, else None."""
    exact = table.get(model_name)
    if exact is not None:
        return exact
    provider = model_provider(model_name)
    return table.get(f"{provider}/*")


def cost_usd(
    model_name: str, input_tokens: int, output_tokens: int, table: Mapping[str, ModelPrice]
) -> float:
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError(f"token counts cannot be negative: {input_tokens}, {output_tokens}")
    price = price_for(model_name, table)
    if price is None:
        _warn_unpriced(model_name)
        return 0.0
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1_000_000


def _warn_unpriced(model_name: str) -> None:
    with _warned_lock:
        if model_name in _warned:
            return
        _warned.add(model_name)
    _log.warning(
        "no price for model %r: its calls count as $0.00 toward budgets; "
        "add it to RLM_JOBS_PRICES (USD per million tokens) to price it",
        model_name,
    )
