"""recurse: a long context is split in three and handed to child RLMs; a short one is read
by one sub-model. Children run the same policy on their part, so with ``max_depth`` >= 2 a
long enough context grows a depth-2 tree. The root finishes with FINAL(...) written in its
reply, outside code, to exercise that path.
"""

from __future__ import annotations

from rlm_jobs.testing.policies.base import Conversation, Policy, final_reply, render, reply
from rlm_jobs.testing.policies.sub import NOTHING, QUESTION_PREFIX, TEXT_MARK, answer_sub

# Past this many characters a context is worth splitting among children.
THRESHOLD_CHARS = 2_000

# A child's context is "Question: ...\n\nText:\n..." written by its parent; the root's is
# the user's data and its question is the query.
READ_TASK = r"""
import json
import re

question = $query
text = context if isinstance(context, str) else json.dumps(context, ensure_ascii=False)
if text.startswith($question_prefix) and $text_mark in text:
    question, text = text[len($question_prefix):].split($text_mark, 1)
"""

SPLIT = r"""
def split_in(text, n):
    parts, start = [], 0
    for i in range(1, n):
        target = len(text) * i // n
        cut = text.rfind("\n", start, target + 1)
        cut = cut + 1 if cut > start else target
        parts.append(text[start:cut])
        start = cut
    parts.append(text[start:])
    return [part for part in parts if part.strip()]


parts = split_in(text, 3)
results = rlm_query_batched([f"Question: {question}\n\nText:\n{part}" for part in parts])
"""

READ = r"""
results = [llm_query(f"Question: {question}\n\nPart 1 of 1:\n{text}")]
"""

COMBINE = r"""
findings = []
for result in results:
    for line in re.split(r"\n|; ", result):
        line = line.strip()
        if line and line != $nothing and not line.startswith("Error:") and line not in findings:
            findings.append(line)
result = "; ".join(findings) if findings else $nothing
print(result)
"""


def root(conv: Conversation) -> str:
    if conv.turn >= 1 or conv.last_call:
        return final_reply("The combined result is:", conv.best_answer(default=NOTHING))
    task = render(READ_TASK, query=conv.query, question_prefix=QUESTION_PREFIX, text_mark=TEXT_MARK)
    combine = render(COMBINE, nothing=NOTHING)
    size = conv.context.total_chars if conv.context else 0
    if size > THRESHOLD_CHARS:
        return reply(
            f"The context has {size:,} characters; I will give three parts to child RLMs.",
            task + SPLIT + combine,
        )
    return reply("The context is short enough for one sub-model to read.", task + READ + combine)


POLICY = Policy(name="recurse", root=root, sub=answer_sub)
