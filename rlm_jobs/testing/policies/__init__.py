"""Scripted model policies: ``scripted/<name>`` answers as ``POLICIES[name]``.

ROOT mode (the first message is our system prompt, which explains ```repl blocks) plays
an RLM root model turn by turn; SUB mode answers a single prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.testing.policies import (
    aggregate,
    clock,
    documents,
    generic,
    needle,
    recurse,
    session,
    simple,
    tools,
)
from rlm_jobs.testing.policies.base import (
    ContextInfo,
    Conversation,
    Policy,
    block_outputs,
    is_root,
    parse_context_info,
)

__all__ = [
    "POLICIES",
    "ContextInfo",
    "Conversation",
    "Policy",
    "block_outputs",
    "is_root",
    "parse_context_info",
    "respond",
]

POLICIES: dict[str, Policy] = {
    policy.name: policy
    for policy in (
        generic.POLICY,
        needle.POLICY,
        aggregate.POLICY,
        recurse.POLICY,
        simple.RECOVER,
        simple.STALL,
        simple.ERRORS,
        simple.SPIN_POLICY,
        simple.CHATTY,
        simple.EXEC,
        clock.POLICY,
        documents.CORPUS,
        documents.FIELDS,
        tools.POLICY,
        session.POLICY,
    )
}


def respond(policy: Policy, messages: Sequence[ChatMessage]) -> str:
    """The policy's reply to a conversation, as root or as sub-model."""
    if is_root(messages):
        return policy.root(Conversation.parse(messages))
    prompts = [m["content"] for m in messages if m["role"] == "user"]
    return policy.sub(prompts[-1] if prompts else "")
