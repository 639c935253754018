"""Bench-only scripted policies, registered into the provider's policy table at run time.

Two kinds:

- probes (``bench-pingpong``, ``bench-fanout``, ``bench-len``, ``bench-wait``) play a root
  model whose one cell measures something *inside the sandbox* with ``time.perf_counter``
  and ends the job with the numbers as its answer (JSON);
- ``ref-<policy>`` adapters let the reference implementation (PyPI ``rlms``) run our
  scripted policies. The reference writes its conversation differently (its own first
  message, ``Turn i/n:`` prompts, ``REPL output:`` feedback) and its REPL has no
  ``FINAL``/``FINAL_VAR`` and ignores ``FINAL(...)`` written in prose. The adapter reads
  its conversation into our ``Conversation`` and rewrites only the lines that end a job
  into ``answer["content"] = ...; answer["ready"] = True``. Every other cell, every
  sub-call prompt and every sub-model answer is byte-for-byte the same.

The probe queries carry their parameters (``"pingpong n=200"``), so one policy serves
every size.
"""

from __future__ import annotations

import ast
import re
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass

from rlm_jobs import parsing
from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.testing import exchange
from rlm_jobs.testing.policies import POLICIES, is_root, respond
from rlm_jobs.testing.policies.base import (
    ContextInfo,
    Conversation,
    Policy,
    final_reply,
    render,
    reply,
)
from rlm_jobs.testing.policies.sub import answer_sub

# The workloads of the per-job overhead scenario, by the name of our policy.
REFERENCE_POLICIES = ("needle", "aggregate", "recurse", "recover")

PINGPONG = r"""
import json
import time

latencies = []
for i in range($n):
    started = time.perf_counter()
    llm_query("ping " + str(i))
    latencies.append(time.perf_counter() - started)
answer["content"] = json.dumps(latencies)
answer["ready"] = True
"""

FANOUT = r"""
import json
import time

prompts = ["fan " + str(i) for i in range($n)]
started = time.perf_counter()
replies = llm_query_batched(prompts)
wall_s = time.perf_counter() - started
errors = sum(1 for r in replies if r.startswith("Error"))
answer["content"] = json.dumps({"wall_s": wall_s, "n": len(replies), "errors": errors})
answer["ready"] = True
"""

# Touches the whole context, then reports the sandbox's own peak RSS (VmHWM).
LENGTH = r"""
import json

size = len(context)
# A few sub-calls over slices: their prompts must travel by key, not in task messages.
replies = llm_query_batched([context[i * 1000:(i + 1) * 1000] for i in range(8)])
peak_kb = 0
with open("/proc/self/status") as status:
    for line in status:
        if line.startswith("VmHWM:"):
            peak_kb = int(line.split()[1])
answer["content"] = json.dumps({"len": size, "sandbox_vmhwm_kb": peak_kb, "replies": len(replies)})
answer["ready"] = True
"""

DONE = r"""
answer["content"] = "done"
answer["ready"] = True
"""

_PARAM = re.compile(r"\bn=(\d+)")


def _n(conv: Conversation, default: int) -> int:
    match = _PARAM.search(conv.query)
    return int(match.group(1)) if match else default


def _probe(template: str, default_n: int = 1) -> Policy:
    name = {PINGPONG: "pingpong", FANOUT: "fanout", LENGTH: "len", DONE: "wait"}[template]

    def root(conv: Conversation) -> str:
        if conv.turn > 0 or conv.last_call:
            # The probe cell ends the job; a second turn means it failed: say so.
            return final_reply("The probe did not finish.", "probe failed")
        return reply("Measuring.", render(template, n=_n(conv, default_n)))

    return Policy(name=f"bench-{name}", root=root, sub=answer_sub)


PROBES = (_probe(PINGPONG), _probe(FANOUT), _probe(LENGTH), _probe(DONE))


# ---- the reference adapter ------------------------------------------------------------------

_REF_QUERY = re.compile(r"\AAnswer the following: (?P<q>.*?)\n\nYour context is", re.DOTALL)
_REF_CONTEXT = re.compile(r"Your context is a (?P<kind>\w+) of (?P<n>[\d,]+) total characters")
_REF_OUTPUT = re.compile(r"REPL output(?: \(block \d+\))?:\n")
_REF_VARS = re.compile(r"^REPL variables: .*$", re.MULTILINE)
_FINAL_LINE = re.compile(r"^(?P<indent>[ \t]*)FINAL\((?P<expr>.*)\)[ \t]*$", re.MULTILINE)
_FINAL_VAR_LINE = re.compile(r"^(?P<indent>[ \t]*)FINAL_VAR\((?P<name>.*)\)[ \t]*$", re.MULTILINE)


def reference_conversation(messages: Sequence[ChatMessage]) -> Conversation:
    """The reference's messages read as our policies expect them."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    first = users[0] if users else ""
    query = _REF_QUERY.search(first)
    context = _REF_CONTEXT.search(first)
    info = None
    if context:
        kind = context.group("kind")
        total = int(context.group("n").replace(",", ""))
        if kind in ("str", "list", "dict"):
            info = ContextInfo(kind, total, total)  # type: ignore[arg-type]
    outputs: list[str] = []
    for text in users[1:]:
        for piece in _REF_OUTPUT.split(text)[1:]:
            outputs.append(_REF_VARS.sub("", piece).strip("\n"))
    return Conversation(
        query=query.group("q").strip() if query else "",
        context=info,
        turn=sum(1 for m in messages if m["role"] == "assistant"),
        outputs=tuple(outputs),
        # The reference asks for a final answer with a prefilled assistant turn.
        last_call=bool(messages) and messages[-1]["role"] == "assistant",
    )


def _set_answer(indent: str, value: str) -> str:
    return f'{indent}answer["content"] = str({value}); answer["ready"] = True'


def reference_reply(text: str) -> str:
    """Our reply with the job-ending lines spelled with the reference's ``answer`` dict."""

    def final_var(match: re.Match[str]) -> str:
        name = ast.literal_eval(match.group("name").strip())
        return _set_answer(match.group("indent"), str(name))

    def final(match: re.Match[str]) -> str:
        return _set_answer(match.group("indent"), match.group("expr"))

    in_prose = parsing.final_in_text(text)
    blocks = []
    for code in parsing.code_blocks(text):
        code = _FINAL_VAR_LINE.sub(final_var, code)
        blocks.append(_FINAL_LINE.sub(final, code))
    prose = parsing.prose(text)
    if in_prose is not None:
        prose = _FINAL_LINE.sub("", _FINAL_VAR_LINE.sub("", prose))
        value = in_prose.var_name if in_prose.var_name else repr(in_prose.text or "")
        blocks.append(_set_answer("", value))
    return reply(prose.strip() or "Finishing.", *blocks)


@dataclass(frozen=True)
class ReferencePolicy(Policy):
    """One of our policies, answering the reference's raw conversation."""

    inner: Policy | None = None

    def respond(self, messages: Sequence[ChatMessage]) -> str:
        assert self.inner is not None
        if is_root(messages):
            return reference_reply(self.inner.root(reference_conversation(messages)))
        prompts = [m["content"] for m in messages if m["role"] == "user"]
        return self.inner.sub(prompts[-1] if prompts else "")


def _respond(policy: Policy, messages: Sequence[ChatMessage]) -> str:
    if isinstance(policy, ReferencePolicy):
        return policy.respond(messages)
    return respond(policy, messages)


def install(policies: MutableMapping[str, Policy] = POLICIES) -> None:
    """Register the probes and the ``ref-*`` adapters in this process (idempotent).

    ``respond`` hands a root policy our own parse of the messages, which cannot read the
    reference's format, so the adapters also need the raw messages: the provider's
    exchange module is pointed at a ``respond`` that gives them to ``ReferencePolicy``
    and behaves exactly as before for every other policy.
    """
    for probe in PROBES:
        policies[probe.name] = probe
    for name in REFERENCE_POLICIES:
        inner = policies[name]
        policies[f"ref-{name}"] = ReferencePolicy(
            name=f"ref-{name}", root=inner.root, sub=inner.sub, inner=inner
        )
    exchange.respond = _respond  # type: ignore[attr-defined]
