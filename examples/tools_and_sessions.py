"""Library mode with custom tools and a persistent session, offline.

    python examples/tools_and_sessions.py

Tools: `fx_rate` below runs here, in this process; the model's code in the sandbox calls
it by name and gets its JSON result (or a ToolError). Session: `persistent=True` keeps one
REPL and one conversation across completion() calls, so the third question uses a
variable the first one made. Both use offline scripted models that know these tasks; with
a real model, pass backend="openai" and backend_kwargs={"model_name": ...} instead.
"""

from __future__ import annotations

from rlm_jobs import RLM
from rlm_jobs.testing import ScriptedProvider

# What one unit is worth in US dollars (a real tool would ask a service).
RATES = {"EUR": 1.08, "GBP": 1.27, "USD": 1.0}


def fx_rate(currency: str) -> float:
    """What one unit of `currency` (an ISO code such as "EUR") is worth in US dollars."""
    if currency not in RATES:
        raise ValueError(f"no exchange rate for {currency!r}")
    return RATES[currency]


INVOICES = "Invoice 1: 120.00 EUR\nInvoice 2: 80.50 GBP\nInvoice 3: 99 CHF\nInvoice 4: 12.25 USD\n"
TABLES = [
    ("apples: 3\npears: 5\nplums: 7\n", "What is the total?"),
    ("apples: 10\npears: 1\n", "What is the total?"),
    ("apples: 4\npears: 5\nplums: 9\n", "Which items grew since the first question?"),
]


def main() -> None:
    with ScriptedProvider() as provider:
        scripted = {"base_url": provider.url}
        with RLM(
            backend="scripted",
            backend_kwargs={"model_name": "tools", **scripted},
            custom_tools={"fx_rate": fx_rate},
        ) as rlm:
            done = rlm.completion(INVOICES, root_prompt="What is the total in US dollars?")
        print(f"tools:   {done.status.value}: {done.response}")
        with RLM(
            backend="scripted",
            backend_kwargs={"model_name": "session", **scripted},
            persistent=True,
        ) as rlm:
            for n, (table, question) in enumerate(TABLES, start=1):
                done = rlm.completion(table, root_prompt=question)
                print(f"session: question {n}: {question} -> {done.response}")


if __name__ == "__main__":
    main()
