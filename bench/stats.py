"""Summaries of repeated measurements: median and p99, always with the sample count."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), for small samples."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float], unit: str = "s") -> dict[str, Any]:
    """``{"median", "p99", "min", "max", "n", "unit"}``; NaN-free when there are values."""
    if not values:
        return {"median": None, "p99": None, "min": None, "max": None, "n": 0, "unit": unit}
    return {
        "median": statistics.median(values),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "unit": unit,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def target(value: float | None, limit: float, *, at_least: bool = False) -> dict[str, Any]:
    """A target judged, never asserted: ``{"limit", "value", "met"}``."""
    if value is None:
        return {"limit": limit, "value": None, "met": None, "at_least": at_least}
    met = value >= limit if at_least else value <= limit
    return {"limit": limit, "value": value, "met": met, "at_least": at_least}
