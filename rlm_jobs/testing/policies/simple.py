"""Policies that misbehave on purpose, to exercise the loop's limits and recovery.

- recover: turn 1 raises after setting a variable; turn 2 reads the traceback and fixes it.
- stall:   never finishes; answers from earlier output when asked for a final answer.
- errors:  every cell raises (max_consecutive_errors).
- spin:    every cell loops forever (cell and job timeouts).
- chatty:  like stall, but every reply is thousands of tokens (token and cost caps).
- exec:    runs the query as code and answers with its output (the security suite).
"""

from __future__ import annotations

from rlm_jobs.testing.policies.base import Conversation, Policy, final_reply, render, reply
from rlm_jobs.testing.policies.sub import answer_sub

MEASURE = r"""
sizes = {"items": len(context)}
print("context length:", sizes["items"])
print("words:", sizes["words"])
"""

FIX = r"""
import json

text = context if isinstance(context, str) else json.dumps(context, ensure_ascii=False)
sizes["words"] = len(text.split())
print(sizes)
FINAL(f"{sizes['items']} items, {sizes['words']} words")
"""

PROBE = r"""
step = $turn
print(f"step {step}: the context still has {len(context):,} items")
"""

FAIL = r"""
attempt = $turn
raise RuntimeError(f"scripted failure number {attempt}")
"""

SPIN = r"""
while True:
    pass
"""

# About 4,000 tokens of reply under the scripted provider's four-characters-a-token rule.
CHATTY_PROSE = (
    "Let me think this through carefully once more before deciding what to do next. " * 200
)


def _recover(conv: Conversation) -> str:
    if conv.last_call or conv.turn >= 2:
        return final_reply("My best answer:", conv.best_answer(default="no answer"))
    if conv.turn == 0:
        return reply("Let me measure the context in characters and words.", MEASURE)
    why = (
        "That failed: `sizes` has no 'words' key yet. `sizes` itself survived the error, "
        "so I add the missing count and finish."
        if conv.saw_traceback()
        else "Adding the word count and finishing."
    )
    return reply(why, FIX)


def _stall(conv: Conversation) -> str:
    if conv.last_call:
        return final_reply("Out of turns; going with:", conv.best_answer(default="no answer"))
    return reply("Still exploring.", render(PROBE, turn=conv.turn))


def _errors(conv: Conversation) -> str:
    if conv.last_call:
        return final_reply("Nothing worked.", conv.best_answer(default="no answer"))
    return reply("Trying again.", render(FAIL, turn=conv.turn))


def _spin(conv: Conversation) -> str:
    if conv.last_call:
        return final_reply("Nothing finished.", conv.best_answer(default="no answer"))
    return reply("Waiting for something to happen.", SPIN)


def _chatty(conv: Conversation) -> str:
    if conv.last_call:
        return final_reply("Out of turns; going with:", conv.best_answer(default="no answer"))
    # Code first: a reply cut short by max_output_tokens still carries its block.
    return reply("Probing once more.", render(PROBE, turn=conv.turn)) + "\n\n" + CHATTY_PROSE


RECOVER = Policy(name="recover", root=_recover, sub=answer_sub)
STALL = Policy(name="stall", root=_stall, sub=answer_sub)
ERRORS = Policy(name="errors", root=_errors, sub=answer_sub)
SPIN_POLICY = Policy(name="spin", root=_spin, sub=answer_sub)
CHATTY = Policy(name="chatty", root=_chatty, sub=answer_sub)


def _exec(conv: Conversation) -> str:
    """Runs the query itself as its one cell, then answers with what it printed.

    The security suite uses it to run attack code "written by the model" inside a real job.
    """
    if conv.turn == 0 and not conv.last_call:
        return reply("Running the code I was given.", conv.query)
    return final_reply("It printed:", conv.last_output or "(no output)")


EXEC = Policy(name="exec", root=_exec, sub=answer_sub)
