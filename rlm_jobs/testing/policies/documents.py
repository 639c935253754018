"""Policies for document work: questions across a corpus, and answers that fill a schema.

- corpus: asks a sub-model the question about every document of a dict context (chunk by
  chunk) and answers with each document's findings under its name, so an answer that
  needs two documents comes from both.
- fields: fills the top-level fields of the answer schema, one sub-call per field
  ("Label: value" lines), and answers with the JSON. Like a hurried model it sends the
  values as the strings it found; told that they break the schema, it converts them to
  the schema's types and tries again. What conversion cannot fix (a value outside an
  enum) stays wrong, so such a job runs out of retries.
"""

from __future__ import annotations

from rlm_jobs.testing.policies import snippets
from rlm_jobs.testing.policies.base import Conversation, Policy, final_reply, render, reply
from rlm_jobs.testing.policies.sub import (
    FIELD_ASK,
    NOTHING,
    QUESTION_PREFIX,
    TEXT_MARK,
    answer_sub,
)

# Small documents go to a sub-model whole; larger ones in chunks of this size.
CHUNK_CHARS = 20_000

LIST_DOCUMENTS = r"""
documents = context if isinstance(context, dict) else {"context": context}
for name, content in documents.items():
    size = len(content) if isinstance(content, str) else len(json.dumps(content))
    print(f"{name}: {type(content).__name__}, {size:,} characters")
"""

ASK_EACH = r"""
question = $query
asks, owners = [], []
for name, content in documents.items():
    for chunk in chunks_of(content):
        asks.append($prefix + question + $text_mark + chunk)
        owners.append(name)
replies = llm_query_batched(asks)
findings = {}
for name, found in zip(owners, replies):
    found = found.strip()
    if found and found != $nothing and not found.startswith("Error:"):
        findings.setdefault(name, []).append(" ".join(found.split()))
print(f"{len(findings)} of {len(documents)} documents answer: {sorted(findings)}")
"""

ANSWER_BY_DOCUMENT = r"""
lines = [f"{name}: {' '.join(found)}" for name, found in findings.items()]
FINAL("\n".join(lines) if lines else "No document answers the question.")
"""


def _corpus(conv: Conversation) -> str:
    if conv.last_call or conv.turn >= 3:
        return final_reply("What I found so far.", conv.best_answer(default=NOTHING))
    if conv.turn == 0:
        return reply("First, which documents there are.", "import json" + LIST_DOCUMENTS)
    if conv.turn == 1:
        return reply(
            "I will ask about every document, chunk by chunk, and keep what each one says.",
            render(snippets.CHUNKING, chunk_chars=CHUNK_CHARS),
            render(
                ASK_EACH, query=conv.query, prefix=QUESTION_PREFIX, text_mark=TEXT_MARK,
                nothing=NOTHING,
            ),
        )  # fmt: skip
    return reply("Each document's finding, under its name.", ANSWER_BY_DOCUMENT)


EXTRACT = r"""
import json

text = context if isinstance(context, str) else json.dumps(context, ensure_ascii=False)
fields = $fields
asks = [$ask + "\nField: " + name + "\nMeaning: " + meaning + $text_mark + text
        for name, meaning in fields]
record = {name: value.strip() for (name, _), value in zip(fields, llm_query_batched(asks))}
print(record)
FINAL(json.dumps(record))
"""

CONVERT = r"""
import re

kinds = $kinds


def convert(value, kind):
    number = re.sub(r"[^0-9.\-]", "", str(value))
    if kind == "integer":
        return int(float(number))
    if kind == "number":
        return float(number)
    if kind == "boolean":
        return str(value).strip().lower() in ("yes", "true", "1")
    return value


converted = {}
for name, value in record.items():
    try:
        converted[name] = convert(value, kinds.get(name))
    except ValueError:
        converted[name] = value
record = converted
print(record)
FINAL(json.dumps(record))
"""


def _fields(conv: Conversation) -> str:
    if conv.last_call:
        return final_reply("My answer so far.", conv.best_answer(default=NOTHING))
    properties = (conv.schema or {}).get("properties")
    if not isinstance(properties, dict):
        return final_reply("There is no answer schema with fields to fill.", NOTHING)
    if conv.turn == 0:
        return reply("Let me look at the document first.", snippets.INSPECT)
    if conv.turn == 1:
        fields = [(str(n), str(p.get("description", ""))) for n, p in properties.items()]
        return reply(
            "I will ask for each field of the schema and answer with them as JSON.",
            render(EXTRACT, fields=fields, ask=FIELD_ASK, text_mark=TEXT_MARK),
        )
    if conv.schema_rejected:
        kinds = {str(n): p.get("type") for n, p in properties.items() if isinstance(p, dict)}
        return reply(
            "The values must have the schema's types: converting them.",
            render(CONVERT, kinds=kinds),
        )
    return final_reply("Done.", conv.best_answer(default=NOTHING))


CORPUS = Policy(name="corpus", root=_corpus, sub=answer_sub)
FIELDS = Policy(name="fields", root=_fields, sub=answer_sub)
