"""session: questions about tables of "name: number" lines, a session long.

Each question's context is such a table: the policy parses it into ``table_<n>`` (``n``:
the question's number in the session) and prints ``SHOW_VARS()``. A question that asks what
grew "since the first question" compares its table with ``table_1``, which only a REPL that
kept the first question's variables has (the policy reads SHOW_VARS() to know, as a model
would); asked first, it says there is no earlier question. Any other question is answered
with its table's total.
"""

from __future__ import annotations

from rlm_jobs.testing.policies.base import Conversation, Policy, final_reply, render, reply
from rlm_jobs.testing.policies.sub import answer_sub

PARSE = r"""
name = $name
table = {}
for line in (context if isinstance(context, str) else "").splitlines():
    key, sep, value = line.partition(":")
    try:
        table[key.strip()] = float(value)
    except ValueError:
        pass
globals()[name] = table
print(name, "=", table)
print(SHOW_VARS())
"""

COMPARE = r"""
first, now = table_1, globals()[$name]
grown = sorted(key for key in now if key in first and now[key] > first[key])
FINAL(", ".join(grown) if grown else "nothing grew")
"""

TOTAL = r"""
FINAL(f"{sum(globals()[$name].values()):g}")
"""


def _root(conv: Conversation) -> str:
    name = f"table_{conv.question}"
    if conv.last_call:
        return final_reply("Out of turns; what I have:", conv.best_answer(default="unknown"))
    if conv.turn == 0:
        return reply(f"I will read this question's table into `{name}`.", render(PARSE, name=name))
    if "since the first question" not in conv.query.lower():
        return reply("The total of this table.", render(TOTAL, name=name))
    if conv.question == 1:
        return final_reply("This is the first question I was asked.", "no earlier question")
    if not any("table_1: dict" in output for output in conv.outputs):
        return final_reply("The first question's table is not in the REPL any more.", "unknown")
    return reply("Comparing with the first question's table.", render(COMPARE, name=name))


POLICY = Policy(name="session", root=_root, sub=answer_sub)
