"""tools: adds up amounts in several currencies with the host's tools.

It expects ``fx_rate(currency)`` (what one unit of ``currency`` is worth in US dollars)
and, if the system prompt lists it, ``archive_total(total)`` (files the total, returns a
receipt). It reads every "<amount> <CUR>" in the context, asks ``fx_rate`` for each
currency (one the tool does not know is reported, not guessed), adds up what it can,
files the total, and answers with the total, the currencies left out and the receipt, or
why filing failed. Without ``fx_rate`` in the tool list it says it has no rates.
"""

from __future__ import annotations

from rlm_jobs.testing.policies.base import Conversation, Policy, final_reply, render, reply
from rlm_jobs.testing.policies.sub import answer_sub

PARSE = r"""
import re

text = context if isinstance(context, str) else "\n".join(map(str, context))
amounts = {}
for amount, currency in re.findall(r"(\d+(?:\.\d+)?) ([A-Z]{3})\b", text):
    amounts[currency] = round(amounts.get(currency, 0.0) + float(amount), 2)
print("amounts:", amounts)
"""

RATES = r"""
rates, unknown = {}, {}
for currency in sorted(amounts):
    try:
        rates[currency] = fx_rate(currency)
    except ToolError as exc:
        unknown[currency] = str(exc)
total = round(sum(amounts[c] * rates[c] for c in rates), 2)
print("rates:", rates)
print("unknown:", unknown)
print("total:", total)
"""

ARCHIVE = r"""
receipt = archive_total(total)
print("receipt:", receipt)
"""

ANSWER = r"""
parts = [f"{total:.2f} USD"]
if unknown:
    parts.append("no rate for " + ", ".join(sorted(unknown)))
problem = $problem
parts.append(f"receipt {receipt}" if problem is None else f"not filed: {problem}")
FINAL("; ".join(parts))
"""


def _filing_problem(conv: Conversation) -> str | None:
    """The ToolError the archive cell raised, as the traceback in its output said it."""
    if "archive_total" not in conv.tools:
        return "there is no archive tool"
    for output in conv.outputs:
        for line in output.splitlines():
            if line.startswith("ToolError: archive_total"):
                return line.removeprefix("ToolError: ")
    return None


def _root(conv: Conversation) -> str:
    if "fx_rate" not in conv.tools:
        return final_reply("I have no exchange-rate tool, so I cannot convert.", "no rates")
    if conv.last_call:
        return final_reply("Out of turns; what I have:", conv.best_answer(default="no total"))
    if conv.turn == 0:
        cells = [PARSE, RATES] + ([ARCHIVE] if "archive_total" in conv.tools else [])
        return reply(
            "I will read the amounts, convert them with fx_rate and file the total.", *cells
        )
    return reply(
        "Done: the total of what I could convert.", render(ANSWER, problem=_filing_problem(conv))
    )


POLICY = Policy(name="tools", root=_root, sub=answer_sub)
