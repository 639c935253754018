"""Tools the tests register (``RLM_JOBS_TOOLS=tests.support.tools`` for workers): host-side
functions the scripted ``tools`` policy calls from its cells.

Every call is appended to the file ``RLM_TEST_TOOL_LOG`` names (when set), so a test can
count what ran in a worker process it does not share memory with.
"""

from __future__ import annotations

import json
import os
import time

# What one unit is worth in US dollars; a currency missing here makes fx_rate raise.
RATES = {"EUR": 1.08, "GBP": 1.27, "USD": 1.0, "JPY": 0.0067}
# Longer than archive_total's own time limit, so filing always times out.
ARCHIVE_S = 5.0
ARCHIVE_TIMEOUT_S = 1.0


def _log(name: str, *args: object) -> None:
    path = os.environ.get("RLM_TEST_TOOL_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps([name, *args]) + "\n")


def fx_rate(currency: str) -> float:
    """What one unit of `currency` (an ISO code such as "EUR") is worth in US dollars."""
    _log("fx_rate", currency)
    if currency not in RATES:
        raise ValueError(f"no exchange rate for {currency!r}")
    return RATES[currency]


def archive_total(total: float) -> str:
    """File `total` (in US dollars) in the accounts archive; returns the receipt number."""
    _log("archive_total", total)
    time.sleep(ARCHIVE_S)
    return f"R-{int(total * 100)}"


TOOLS = {
    "fx_rate": fx_rate,
    "archive_total": {"tool": archive_total, "timeout_s": ARCHIVE_TIMEOUT_S},
}


def tool_log(path: str) -> list[list[object]]:
    """The calls logged to ``path``, in order."""
    try:
        with open(path, encoding="utf-8") as log:
            return [json.loads(line) for line in log if line.strip()]
    except FileNotFoundError:
        return []


# ---- what the tool and session tests ask about ----------------------------------------

INVOICES = (
    "Invoice 1: 120.00 EUR for consulting\n"
    "Invoice 2: 80.50 GBP for travel\n"
    "Invoice 3: 45.00 EUR for books\n"
    "Invoice 4: 1000 XYZ for tokens of a private currency\n"
    "Invoice 5: 12.25 USD for postage\n"
)
TABLES = (
    "apples: 3\npears: 5\nplums: 7\nfigs: 2\n",
    "apples: 10\npears: 1\n",
    "apples: 4\npears: 5\nplums: 9\nfigs: 1\n",
)
QUESTIONS = (
    "What is the total?",
    "What is the total?",
    "Which items grew since the first question?",
)


def invoice_total() -> float:
    """What the invoices add up to at the tools' rates (the policy does not know these)."""
    amounts = {"EUR": 165.0, "GBP": 80.5, "USD": 12.25}
    return round(sum(v * RATES[c] for c, v in amounts.items()), 2)
