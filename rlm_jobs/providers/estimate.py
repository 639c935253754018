"""Token estimates: a request's size before it is sent, and a batch's cost before it runs.

Both count four characters as one token (rounded up), the usual ratio for English text
under the OpenAI and Anthropic tokenizers and exactly the scripted provider's rule. No
tokenizer is loaded: the rate limiter corrects its reservation from the reply's usage,
and a dry run is an order of magnitude, not an invoice.

A batch estimate (``rlm-jobs batch --dry-run``) models each job as the RLM recipe our
system prompt suggests:

- **sub-calls** read the whole context once, in chunks of ``SUB_CHUNK_CHARS``: input is
  the context's characters / 4 plus the query once per chunk; output ``SUB_REPLY_TOKENS``
  per chunk;
- the **root model** takes ``ROOT_TURNS`` turns (inspect, map, combine, answer; fewer if
  ``max_iterations`` is lower). Turn *t* (1-based) re-reads the system prompt and the
  first message, plus ``ROOT_REPLY_TOKENS + FEEDBACK_TOKENS`` for each earlier turn (its
  reply and the output we sent back); each turn writes ``ROOT_REPLY_TOKENS``.

Costs use the price table (``RLM_JOBS_PRICES`` over the defaults); an unpriced model is
reported as such and counted as $0, as it is when jobs run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rlm_jobs import prompts
from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.config import ModelPrice
from rlm_jobs.contexts import ContextValue, describe
from rlm_jobs.models import ContextRef
from rlm_jobs.pricing import price_for

__all__ = [
    "CHARS_PER_TOKEN",
    "DocumentEstimate",
    "estimate_document",
    "message_tokens",
    "text_tokens",
]

CHARS_PER_TOKEN = 4
# The chunk size our scripted generic policy uses and a real sub-model reads comfortably.
SUB_CHUNK_CHARS = 20_000
SUB_REPLY_TOKENS = 100
# Inspect, map, combine, answer: the shortest plan that reads the data.
ROOT_TURNS = 4
ROOT_REPLY_TOKENS = 500
FEEDBACK_TOKENS = 500
# Only describe() reads a reference here; the digest is never looked up.
_NO_DIGEST = "0" * 64


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def message_tokens(messages: Sequence[ChatMessage]) -> int:
    """What a request will cost in input tokens, estimated from its characters."""
    return math.ceil(sum(len(m["content"]) for m in messages) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class DocumentEstimate:
    doc_id: str
    chars: int
    root_input_tokens: int
    root_output_tokens: int
    sub_input_tokens: int
    sub_output_tokens: int
    cost_usd: float

    @property
    def tokens(self) -> int:
        return (
            self.root_input_tokens
            + self.root_output_tokens
            + self.sub_input_tokens
            + self.sub_output_tokens
        )


def _cost(
    model: str, input_tokens: int, output_tokens: int, table: Mapping[str, ModelPrice]
) -> float:
    price = price_for(model, table)
    if price is None:
        return 0.0
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6


def estimate_document(
    doc_id: str,
    context: ContextValue,
    query: str,
    *,
    model: str,
    sub_model: str,
    max_iterations: int,
    prices: Mapping[str, ModelPrice],
    root_prompt: str | None = None,
) -> DocumentEstimate:
    kind, length, chars = describe(context)
    ref = ContextRef(sha256=_NO_DIGEST, kind=kind, length=length, total_chars=chars)
    base = text_tokens(prompts.system_prompt(ref)) + text_tokens(
        prompts.first_user_message(query, ref, root_prompt)
    )
    turns = min(ROOT_TURNS, max_iterations)
    per_turn = ROOT_REPLY_TOKENS + FEEDBACK_TOKENS
    root_in = turns * base + per_turn * turns * (turns - 1) // 2
    root_out = turns * ROOT_REPLY_TOKENS
    chunks = max(1, math.ceil(chars / SUB_CHUNK_CHARS))
    sub_in = math.ceil(chars / CHARS_PER_TOKEN) + chunks * text_tokens(query)
    sub_out = chunks * SUB_REPLY_TOKENS
    return DocumentEstimate(
        doc_id=doc_id,
        chars=chars,
        root_input_tokens=root_in,
        root_output_tokens=root_out,
        sub_input_tokens=sub_in,
        sub_output_tokens=sub_out,
        cost_usd=_cost(model, root_in, root_out, prices)
        + _cost(sub_model, sub_in, sub_out, prices),
    )
