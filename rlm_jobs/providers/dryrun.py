"""``rlm-jobs batch --dry-run``: what a batch would read and roughly cost, before it runs.

Pure computation over the documents and the price table (no Redis, no provider); how each
number is estimated is in ``rlm_jobs.providers.estimate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rlm_jobs.config import ModelPrice, Settings
from rlm_jobs.models import Limits
from rlm_jobs.pricing import price_for
from rlm_jobs.providers.estimate import (
    ROOT_TURNS,
    SUB_CHUNK_CHARS,
    DocumentEstimate,
    estimate_document,
)
from rlm_jobs.submitter import Document

__all__ = ["BatchEstimate", "estimate_batch", "render", "report"]


@dataclass(frozen=True)
class BatchEstimate:
    model: str
    sub_model: str
    documents: list[DocumentEstimate]
    unpriced: list[str]
    root_turns: int
    # Documents that could not be read (id, why): they would fail alone, costing nothing.
    unreadable: list[tuple[str, str]]

    @property
    def chars(self) -> int:
        return sum(d.chars for d in self.documents)

    @property
    def tokens(self) -> int:
        return sum(d.tokens for d in self.documents)

    @property
    def cost_usd(self) -> float:
        return sum(d.cost_usd for d in self.documents)


def estimate_batch(
    docs: Sequence[Document],
    query: str | None,
    *,
    model: str,
    sub_model: str,
    limits: Limits,
    prices: Mapping[str, ModelPrice],
) -> BatchEstimate:
    estimates = [
        estimate_document(
            doc.id,
            doc.context,
            doc.query or query or "",
            model=model,
            sub_model=sub_model,
            max_iterations=limits.max_iterations,
            prices=prices,
        )
        for doc in docs
        if doc.context is not None
    ]
    unreadable = [(doc.id, doc.error or "unreadable") for doc in docs if doc.context is None]
    unpriced = sorted({m for m in (model, sub_model) if price_for(m, prices) is None})
    turns = min(ROOT_TURNS, limits.max_iterations)
    return BatchEstimate(model, sub_model, estimates, unpriced, turns, unreadable)


def render(
    estimate: BatchEstimate,
    *,
    batch_max_cost_usd: float | None = None,
    batch_max_tokens: int | None = None,
) -> list[str]:
    """The dry run's report: one row per document, the totals, and how they were reached."""
    rows = [
        (d.doc_id, f"{d.chars:,}", f"{d.tokens:,}", f"${d.cost_usd:.4f}")
        for d in estimate.documents
    ]
    total = ("total", f"{estimate.chars:,}", f"{estimate.tokens:,}", f"${estimate.cost_usd:.4f}")
    header = ("document", "characters", "est. tokens", "est. USD")
    widths = [max(len(r[i]) for r in [header, *rows, total]) for i in range(4)]

    def line(cells: tuple[str, str, str, str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    out = [
        f"dry run: {len(estimate.documents) + len(estimate.unreadable)} documents; "
        "nothing was submitted",
        f"root model {estimate.model}, sub-model {estimate.sub_model}",
        line(header),
        *(line(r) for r in rows),
        line(total),
        f"estimate: each job reads its context once through sub-calls (4 characters a "
        f"token, chunks of {SUB_CHUNK_CHARS:,} characters) and takes {estimate.root_turns} root "
        "turns; real jobs "
        "vary with what the model does",
    ]
    for doc_id, why in estimate.unreadable:
        out.append(f"{doc_id}: would fail without running ({why})")
    for name in estimate.unpriced:
        out.append(f"warning: no price for {name}: counted as $0 (set RLM_JOBS_PRICES)")
    if batch_max_cost_usd is not None:
        verdict = "within" if estimate.cost_usd <= batch_max_cost_usd else "over"
        out.append(f"the estimate is {verdict} the batch budget of ${batch_max_cost_usd:.4f}")
    if batch_max_tokens is not None:
        verdict = "within" if estimate.tokens <= batch_max_tokens else "over"
        out.append(f"the estimate is {verdict} the batch cap of {batch_max_tokens:,} tokens")
    return out


def report(
    docs: Sequence[Document],
    *,
    settings: Settings,
    query: str | None,
    model: str | None,
    sub_model: str | None,
    limits: Limits,
    batch_max_cost_usd: float | None = None,
    batch_max_tokens: int | None = None,
) -> list[str]:
    """What ``--dry-run`` prints, with models defaulted from ``settings`` as a run would."""
    root = model or settings.resolved_model()
    estimate = estimate_batch(
        docs,
        query,
        model=root,
        sub_model=sub_model or settings.sub_model or root,
        limits=limits,
        prices=settings.price_table(),
    )
    return render(
        estimate, batch_max_cost_usd=batch_max_cost_usd, batch_max_tokens=batch_max_tokens
    )
