"""What the root model reads: the system prompt and the messages the loop writes.

Written in our own words. The scripted provider's policies parse the markers defined
here (``QUERY_HEADER``, ``OUTPUT_HEADER``, ``LAST_CALL``, ``SCHEMA_HEADER``,
``SCHEMA_REJECTED``, ``TOOLS_HEADER``, ``SESSION_NOTE``), so change them together.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rlm_jobs.models import ContextRef
from sandbox.records import ToolSpec

QUERY_HEADER = "QUERY:\n"
OUTPUT_HEADER = "Output:\n"
LAST_CALL = "You have no REPL turns left."
SCHEMA_HEADER = "ANSWER SCHEMA (JSON Schema):\n"
SCHEMA_REJECTED = "Your final answer does not match the answer schema."
TOOLS_HEADER = "Tools (the user's functions; they run outside the REPL, on the host):\n"
# Starts the first message of a session's later question.
SESSION_NOTE = "This question continues a session"
# How much of the previous answer a follow-up question repeats.
PREVIOUS_ANSWER_CHARS = 2_000
# The query a child RLM (started by rlm_query) answers; its context is the parent's prompt.
CHILD_QUERY = "The variable `context` holds a task from a parent RLM. Do it and give the result."

SYSTEM_PROMPT = """\
You answer a query about a context that is far too large to read at once. You never see \
the context directly: it lives in a persistent Python REPL as the variable `context`, and \
you work on it by writing code.

Each turn, write your reasoning and then one or more code blocks fenced as ```repl ... ```. \
We run the blocks in order and show you what each printed (long output is cut, so print \
summaries, not whole documents). Variables persist between blocks and turns.

Available in the REPL:
- `context`: the data ({context_kind}).
- `llm_query(prompt, model=None) -> str`: ask a language model one question. It can read \
roughly a few hundred thousand characters, so give it chunks of the context, not all of it.
- `llm_query_batched(prompts, model=None) -> list[str]`: many questions at once, answered in \
parallel and returned in order. Much faster than a loop of llm_query. A failed prompt yields \
a string starting with "Error:" in its slot.
- `rlm_query(prompt, model=None) -> str` and `rlm_query_batched(prompts, model=None)`: hand \
a sub-task to a child RLM that gets `prompt` as its own `context` and REPL. Use it for parts \
that need several steps of their own.
- `SHOW_VARS()`: list the variables you have defined.
- `answer`: a dict {{"content": "", "ready": False}}. Set answer["content"] to your answer \
and answer["ready"] = True to finish.
- `FINAL(text)` finishes with `text`; `FINAL_VAR(name)` finishes with the value of the \
variable called `name`. You may also write FINAL(your answer) in your reply outside code.

A good plan: look at the size and shape of `context`, split it into chunks, ask sub-models \
about the chunks with llm_query_batched, collect their findings in variables, combine them, \
check the result, then finish. Do not finish before you have looked at the data."""


TOOLS_SECTION = """\
Call a tool like any function. Its arguments and its result are JSON values (str, int, \
float, bool, None, lists, dicts with str keys). A tool that raises, refuses its arguments \
or runs past its time limit raises ToolError in your cell, with its message."""


def system_prompt(ref: ContextRef, tools: Sequence[ToolSpec] = ()) -> str:
    text = SYSTEM_PROMPT.format(context_kind=ref.describe())
    if not tools:
        return text
    listed = "\n".join(_tool_line(t) for t in tools)
    plan = text.index("\n\nA good plan:")
    return f"{text[:plan]}\n\n{TOOLS_HEADER}{listed}\n{TOOLS_SECTION}{text[plan:]}"


def _tool_line(tool: ToolSpec) -> str:
    doc = "\n".join(f"  {line}" if line else "" for line in tool.doc.splitlines())
    return f"- `{tool.name}{tool.signature}`" + (f"\n{doc}" if doc else "")


def first_user_message(
    query: str,
    ref: ContextRef,
    root_prompt: str | None = None,
    answer_schema: dict[str, Any] | None = None,
) -> str:
    about = f" {ref.description}" if ref.description else ""
    hint = f"\nNote from the user: {root_prompt}\n" if root_prompt else ""
    schema = f"\n\n{schema_instructions(answer_schema)}" if answer_schema is not None else ""
    return (
        f"The variable `context` holds {ref.describe()}.{about} Explore it in the REPL before "
        f"answering.{hint}{schema}\n\n{QUERY_HEADER}{query}"
    )


def followup_user_message(
    query: str,
    ref: ContextRef,
    index: int,
    *,
    root_prompt: str | None = None,
    answer_schema: dict[str, Any] | None = None,
    previous_answer: str | None = None,
    rebuilt: str | None = None,
) -> str:
    """The first message of question ``index`` (from 0) of a session: what carried over,
    then the question as ``first_user_message`` puts it."""
    names = [f"context_{i}" for i in range(index)]
    earlier = " and ".join(names) if len(names) <= 2 else f"{names[0]} ... {names[-1]}"
    parts = [
        f"{SESSION_NOTE}: it is question {index + 1}. The REPL keeps every variable, import and "
        "function from the earlier questions (SHOW_VARS() lists them). `context` now holds "
        f"this question's data, also as `context_{index}`; the earlier questions' contexts "
        f"are {earlier}."
    ]
    if previous_answer is not None:
        answer = previous_answer
        if len(answer) > PREVIOUS_ANSWER_CHARS:
            answer = answer[:PREVIOUS_ANSWER_CHARS] + " ..."
        parts.append(f"Your answer to the previous question was: {answer}")
    if rebuilt:
        parts.append(rebuilt)
    parts.append(first_user_message(query, ref, root_prompt, answer_schema))
    return "\n\n".join(parts)


def schema_instructions(schema: dict[str, Any]) -> str:
    return (
        "Your final answer must be JSON that matches the JSON Schema below. Build it as a "
        "Python value and finish with FINAL(json.dumps(value)). It is parsed and checked; "
        "if it does not match you are told why and can fix it.\n"
        f"{SCHEMA_HEADER}```json\n{json.dumps(schema, indent=2, ensure_ascii=False)}\n```"
    )


def schema_retry_message(problems: list[str], attempt: int, max_attempts: int) -> str:
    listed = "\n".join(f"- {p}" for p in problems)
    return (
        f"{SCHEMA_REJECTED} Problems:\n{listed}\n"
        f"Fix the answer and finish again with FINAL(json.dumps(value)) "
        f"(fix {attempt} of {max_attempts}). If you finished through the `answer` dict, it "
        'is still ready: set answer["ready"] = False before running anything else.'
    )


def block_feedback(code: str, output: str) -> str:
    return f"Code:\n```python\n{code}\n```\n{OUTPUT_HEADER}{output}"


def turn_feedback(blocks: list[tuple[str, str]], iteration: int, max_iterations: int) -> str:
    if not blocks:
        return (
            "Your reply had no ```repl``` block and no final answer. Write code to make "
            f"progress, or finish. (turn {iteration} of {max_iterations})"
        )
    parts = [block_feedback(code, out) for code, out in blocks]
    parts.append(f"(turn {iteration} of {max_iterations})")
    return "\n\n".join(parts)


def last_call_message() -> str:
    return (
        f"{LAST_CALL} Give your final answer now, written as FINAL(your answer), based on "
        "what you have found so far."
    )
