"""What a scripted policy is, and how it reads the conversation the loop wrote.

A policy plays an RLM root model: it reads the messages (through the markers in
``rlm_jobs.prompts``) and writes prose plus ```repl blocks. Its answers come from what
that code computes and what sub-models reply, never from knowing the answer in advance.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rlm_jobs import prompts
from rlm_jobs.clients.base import ChatMessage

REPL_FENCE = "```repl"

# Where one block's feedback starts; derived from the loop's own template so the two
# cannot drift apart silently.
_CODE_PREFIX = prompts.block_feedback("\0", "").split("\0", 1)[0]
_TURN_TRAILER = re.compile(r"\s*\(turn \d+ of \d+\)\s*$")
_TRACEBACK = "Traceback (most recent call last)"
# Lines the loop adds around cell output, which are never a cell's own finding.
_NOT_ANSWERS = ("[stderr]", "[note]", "... [output truncated", "(no output)")

_DESCRIPTIONS: tuple[tuple[Literal["str", "list", "dict"], re.Pattern[str]], ...] = (
    ("str", re.compile(r"a string of ([\d,]+) characters")),
    ("list", re.compile(r"a list of ([\d,]+) items \(([\d,]+) characters in all\)")),
    ("dict", re.compile(r"a dict with ([\d,]+) keys \(([\d,]+) characters in all\)")),
)


@dataclass(frozen=True)
class ContextInfo:
    """What ``ContextRef.describe()`` told the root about its context."""

    kind: Literal["str", "list", "dict"]
    length: int
    total_chars: int


def parse_context_info(text: str) -> ContextInfo | None:
    for kind, pattern in _DESCRIPTIONS:
        match = pattern.search(text)
        if match:
            numbers = [int(g.replace(",", "")) for g in match.groups()]
            return ContextInfo(kind, numbers[0], numbers[-1])
    return None


def parse_schema(text: str) -> dict[str, Any] | None:
    """The answer schema shown after ``prompts.SCHEMA_HEADER`` in a ```json block."""
    _, marker, rest = text.partition(prompts.SCHEMA_HEADER + "```json\n")
    if not marker:
        return None
    body, fence, _ = rest.partition("\n```")
    if not fence:
        return None
    schema = json.loads(body)
    return schema if isinstance(schema, dict) else None


_TOOL_LINE = re.compile(r"^- `([A-Za-z][A-Za-z0-9_]*)\(", re.MULTILINE)


def parse_tools(system: str) -> tuple[str, ...]:
    """The names of the tools listed after ``prompts.TOOLS_HEADER``."""
    _, marker, rest = system.partition(prompts.TOOLS_HEADER)
    if not marker:
        return ()
    listed = rest.split(prompts.TOOLS_SECTION, 1)[0]
    return tuple(_TOOL_LINE.findall(listed))


def _question_starts(messages: Sequence[ChatMessage]) -> list[int]:
    """Where each question begins: the first user message, and each that continues a
    session (``prompts.SESSION_NOTE``)."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    return [
        i for i in users if i == users[0] or messages[i]["content"].startswith(prompts.SESSION_NOTE)
    ]


def block_outputs(feedback: str) -> list[str]:
    """Each block's output in one feedback message, in order."""
    outputs = []
    for piece in feedback.split(prompts.OUTPUT_HEADER)[1:]:
        end = piece.find("\n\n" + _CODE_PREFIX)
        output = piece if end < 0 else piece[:end]
        outputs.append(_TURN_TRAILER.sub("", output).rstrip("\n"))
    return outputs


def is_root(messages: Sequence[ChatMessage]) -> bool:
    """Root calls start with our system prompt, which explains ```repl blocks."""
    return (
        bool(messages)
        and messages[0]["role"] == "system"
        and REPL_FENCE in (messages[0]["content"])
    )


@dataclass(frozen=True)
class Conversation:
    query: str
    context: ContextInfo | None
    # Assistant replies so far: 0 on the first call.
    turn: int
    # Every block output the loop sent back, oldest first.
    outputs: tuple[str, ...]
    # The loop asked for a final answer: no REPL turns left.
    last_call: bool
    # The JSON Schema the answer must match, as the first message showed it.
    schema: dict[str, Any] | None = None
    # The loop sent the last final answer back: it did not match the schema.
    schema_rejected: bool = False
    # The tools the system prompt lists, by name.
    tools: tuple[str, ...] = ()
    # Which question of a session this is (1 outside sessions); everything above is about
    # this question only, from its first message on.
    question: int = 1

    @classmethod
    def parse(cls, messages: Sequence[ChatMessage]) -> Conversation:
        tools = parse_tools(messages[0]["content"]) if messages else ()
        starts = _question_starts(messages)
        question = len(starts) or 1
        messages = messages[starts[-1] :] if starts else messages
        users = [m["content"] for m in messages if m["role"] == "user"]
        first = users[0] if users else ""
        head, marker, query = first.partition(prompts.QUERY_HEADER)
        if not marker:
            head, query = first, ""
        last_assistant = max(
            (i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1
        )
        pending = [m["content"] for m in messages[last_assistant + 1 :] if m["role"] == "user"]
        outputs = tuple(out for text in users[1:] for out in block_outputs(text))
        return cls(
            query=query.strip(),
            context=parse_context_info(head),
            turn=sum(1 for m in messages if m["role"] == "assistant"),
            outputs=outputs,
            last_call=any(prompts.LAST_CALL in text for text in pending),
            schema=parse_schema(head),
            schema_rejected=any(prompts.SCHEMA_REJECTED in text for text in pending),
            tools=tools,
            question=question,
        )

    @property
    def last_output(self) -> str:
        return self.outputs[-1] if self.outputs else ""

    def saw_traceback(self) -> bool:
        return _TRACEBACK in self.last_output

    def best_answer(self, default: str) -> str:
        """The last meaningful line any cell printed: what a model would fall back on."""
        for output in reversed(self.outputs):
            if _TRACEBACK in output:
                continue
            lines = [line.strip() for line in output.splitlines()]
            found = [line for line in lines if line and not line.startswith(_NOT_ANSWERS)]
            if found:
                return found[-1]
        return default


@dataclass(frozen=True)
class Policy:
    name: str
    # ROOT mode: the conversation so far -> the next reply (prose + ```repl blocks).
    root: Callable[[Conversation], str]
    # SUB mode: a prompt -> the answer, from the prompt alone.
    sub: Callable[[str], str]


def render(template: str, **values: object) -> str:
    """Fill ``$name`` slots with Python literals (``repr``), so data never becomes code."""
    return string.Template(template).substitute({k: repr(v) for k, v in values.items()})


def repl(code: str) -> str:
    return f"{REPL_FENCE}\n{code.strip()}\n```"


def reply(prose: str, *codes: str) -> str:
    return "\n\n".join([prose.strip(), *(repl(c) for c in codes)])


def final_reply(prose: str, answer: str) -> str:
    """A reply that ends the job through FINAL(...) written outside code."""
    one_line = " ".join(answer.split()) or "no answer"
    return f"{prose.strip()}\n\nFINAL({one_line})"
