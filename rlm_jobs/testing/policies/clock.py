"""clock: a cell whose sub-call prompt depends on the time it runs.

It asks a sub-model for the secret code with the current time in the prompt, so a job that
resumes from its journal and runs that cell again asks something the journal does not hold:
replay must stop there and go on live, and the answer must still be right.
"""

from __future__ import annotations

from rlm_jobs.testing.policies.base import Conversation, Policy, final_reply, render, reply
from rlm_jobs.testing.policies.sub import NEEDLE_ASK, NOTHING, answer_sub

ASK = r"""
import time
text = context if isinstance(context, str) else str(context)
found = llm_query($ask + f"\n(asked at {time.time():.6f})\n\n" + text)
print(f"the sub-model found: {found}")
"""

FINISH = r"""
answer["content"] = found if found != $nothing else "No secret code found."
answer["ready"] = True
print(answer["content"])
"""


def root(conv: Conversation) -> str:
    if conv.last_call or conv.turn >= 2:
        return final_reply("My best answer so far.", conv.best_answer(default=NOTHING))
    if conv.turn == 0:
        return reply("I will ask a sub-model, noting the time.", render(ASK, ask=NEEDLE_ASK))
    return reply("Setting the answer.", render(FINISH, nothing=NOTHING))


POLICY = Policy(name="clock", root=root, sub=answer_sub)
