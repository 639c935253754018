"""needle: find the one line "The secret code is <TOKEN>." in a huge string."""

from __future__ import annotations

from rlm_jobs.testing.policies import snippets
from rlm_jobs.testing.policies.base import Conversation, Policy, final_reply, render, reply
from rlm_jobs.testing.policies.sub import NEEDLE_ASK, NOTHING, answer_sub

CHUNK_CHARS = 50_000

INSPECT = r"""
text = context if isinstance(context, str) else json.dumps(context, ensure_ascii=False)
print(f"{len(text):,} characters in {text.count(chr(10)) + 1:,} lines")
print(text[:200])
"""

SEARCH = r"""
chunks = chunks_of(text)
replies = llm_query_batched([$ask + "\n\n" + chunk for chunk in chunks])
codes = sorted(useful(replies))
print(f"searched {len(chunks)} chunks; codes found: {codes}")
"""

FINISH = r"""
if codes:
    answer["content"] = codes[0] if len(codes) == 1 else ", ".join(codes)
else:
    answer["content"] = "No secret code found."
answer["ready"] = True
print(answer["content"])
"""


def root(conv: Conversation) -> str:
    if conv.last_call or conv.turn >= 3:
        return final_reply("My best answer so far.", conv.best_answer(default=NOTHING))
    if conv.turn == 0:
        return reply("The context is one big string; let me measure it.", "import json" + INSPECT)
    if conv.turn == 1:
        return reply(
            "I will ask sub-models to look for the code in each chunk.",
            render(snippets.CHUNKING, chunk_chars=CHUNK_CHARS),
            render(snippets.USEFUL, nothing=NOTHING) + render(SEARCH, ask=NEEDLE_ASK),
        )
    return reply("Setting the answer from what the sub-models found.", FINISH)


POLICY = Policy(name="needle", root=root, sub=answer_sub)
