"""aggregate: count the positive reviews in a list of records, labelled by sub-models."""

from __future__ import annotations

from rlm_jobs.testing.policies import snippets
from rlm_jobs.testing.policies.base import Conversation, Policy, final_reply, render, reply
from rlm_jobs.testing.policies.sub import LABEL_ASK, NOTHING, answer_sub

# Reviews per sub-call: a batch a model labels reliably in one reply.
GROUP_SIZE = 25

LABEL = r"""
import json

GROUP_SIZE = $group_size


def review_of(record):
    if isinstance(record, dict):
        return str(record.get("review", record.get("text", json.dumps(record))))
    text = str(record)
    return text.split("review:", 1)[1] if "review:" in text else text


records = context
if isinstance(records, str):
    try:
        records = json.loads(records)
    except ValueError:
        records = records.splitlines()
if isinstance(records, dict):
    records = list(records.values())
reviews = [" ".join(review_of(record).split()) for record in records]
groups = [reviews[i:i + GROUP_SIZE] for i in range(0, len(reviews), GROUP_SIZE)]
replies = llm_query_batched(
    [$ask + "\n\n" + "\n".join(f"{j + 1}. {r}" for j, r in enumerate(group)) for group in groups]
)
labels = []
for group, answer_text in zip(groups, replies):
    got = [line.strip().lower() for line in answer_text.splitlines() if line.strip()]
    if len(got) != len(group):
        print(f"a group of {len(group)} came back with {len(got)} labels: {answer_text[:100]}")
    labels.extend(got[:len(group)])
positives = labels.count("positive")
print(f"{len(reviews)} reviews, {len(labels)} labelled, {positives} positive")
"""

FINISH = r"""
print(f"answering with {positives} positive reviews")
FINAL(str(positives))
"""


def root(conv: Conversation) -> str:
    if conv.last_call or conv.turn >= 3:
        return final_reply("My count so far.", conv.best_answer(default=NOTHING))
    if conv.turn == 0:
        return reply("Let me look at the records first.", snippets.INSPECT)
    if conv.turn == 1:
        return reply(
            "I will have sub-models label the reviews in groups and count the positives.",
            render(LABEL, group_size=GROUP_SIZE, ask=LABEL_ASK),
        )
    return reply("The count is ready.", FINISH)


POLICY = Policy(name="aggregate", root=root, sub=answer_sub)
