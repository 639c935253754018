"""Scripted completers for tests of the loop through its own seams (no provider, no I/O):
root calls answered from a list, sub-calls from another."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.models import ContextRef

CONTEXT = ContextRef(sha256="0" * 64, kind="str", length=11, total_chars=11)


@dataclass(frozen=True)
class Priced:
    text: str
    input_tokens: int = 10
    output_tokens: int = 5
    cost_usd: float = 0.001
    cached: bool = False
    cached_cost_usd: float = 0.0
    rate_limited_s: float = 0.0


@dataclass
class ScriptedCompleter:
    """Answers root calls from a list, in order; an exception in the list is raised."""

    replies: list[str | Exception]
    usage: tuple[int, int, float] = (10, 5, 0.001)
    seen: list[list[ChatMessage]] = field(default_factory=list)

    def complete(
        self,
        model_name: str,
        messages: Sequence[ChatMessage],
        max_output_tokens: int | None = None,
        *,
        context: object = None,
        on_wait: object = None,
        handle: object = None,
    ) -> Priced:
        self.seen.append(list(messages))
        if not self.replies:
            raise AssertionError("the loop asked for more replies than the test scripted")
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        tokens_in, tokens_out, cost = self.usage
        return Priced(reply, tokens_in, tokens_out, cost)


@dataclass
class RootOrSub:
    """Root calls (they open with our system prompt) to one completer, sub-calls to another."""

    root: ScriptedCompleter
    sub: ScriptedCompleter

    def complete(
        self,
        model_name: str,
        messages: Sequence[ChatMessage],
        max_output_tokens: int | None = None,
        *,
        context: object = None,
        on_wait: object = None,
        handle: object = None,
    ) -> Priced:
        chosen = self.root if messages[0]["role"] == "system" else self.sub
        return chosen.complete(model_name, messages, max_output_tokens)


def block(code: str) -> str:
    return f"Let me look.\n```repl\n{code}\n```\n"
