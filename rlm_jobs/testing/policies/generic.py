"""generic: inspect, map the question over chunks with llm_query_batched, combine, finish.

Works for any query and any context shape; its sub answers are extractive (see ``sub``).
"""

from __future__ import annotations

from rlm_jobs.testing.policies import snippets
from rlm_jobs.testing.policies.base import Conversation, Policy, final_reply, render, reply
from rlm_jobs.testing.policies.sub import COMBINE_ASK, NOTHING, answer_sub

# Small enough that a real sub-model reads a chunk comfortably, large enough to keep a
# megabyte context to ~50 calls.
CHUNK_CHARS = 20_000

MAP = r"""
question = $query
part_prompts = [
    f"Question: {question}\n\nPart {i + 1} of {len(chunks)}:\n{chunk}"
    for i, chunk in enumerate(chunks)
]
notes = llm_query_batched(part_prompts)
findings = useful(notes)
print(f"asked about {len(chunks)} parts; {len(findings)} found something relevant")
for finding in findings[:5]:
    print("-", finding[:200])
"""

COMBINE = r"""
if findings:
    listing = "\n".join(f"- {finding}" for finding in findings)
    combined = llm_query(f"Question: {question}\n\n" + $combine_ask + f"\n{listing}")
else:
    combined = "No part of the context answers the question."
print(combined[:500])
FINAL_VAR("combined")
"""


def root(conv: Conversation) -> str:
    if conv.last_call or conv.turn >= 3:
        return final_reply("Here is what I found.", conv.best_answer(default=NOTHING))
    if conv.turn == 0:
        return reply("First, the size and shape of the context.", snippets.INSPECT)
    if conv.turn == 1:
        return reply(
            "I will split the context into chunks and ask a sub-model about each one.",
            render(snippets.CHUNKING, chunk_chars=CHUNK_CHARS) + "\nchunks = chunks_of(context)",
            render(snippets.USEFUL, nothing=NOTHING) + render(MAP, query=conv.query),
        )
    return reply(
        "Now I combine the findings into one answer.", render(COMBINE, combine_ask=COMBINE_ASK)
    )


POLICY = Policy(name="generic", root=root, sub=answer_sub)
