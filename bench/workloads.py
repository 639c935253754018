"""The four reference workloads (the library-mode end-to-end tests' data, seeded).

Each is a context, a query, the scripted policy that plays the root model, the depth it
needs, and the answer a correct run gives. ``small`` shrinks them for ``--smoke``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from rlm_jobs.testing.policies.sub import NEGATIVE_WORDS, POSITIVE_WORDS


@dataclass(frozen=True)
class Workload:
    name: str
    policy: str
    query: str
    context: Any
    expected: str | None
    # rlm-jobs' max_depth; the reference counts depth differently (see ``reference_depth``).
    max_depth: int = 1
    # Root calls and sequential sub-call rounds on the job's longest path (recursion
    # counts its children's path), for the ideal makespan bound.
    root_calls: int = 0
    sub_rounds: int = 0

    @property
    def reference_depth(self) -> int:
        """The reference's ``max_depth`` for the same tree.

        Ours: a job at depth d < max_depth may start child RLMs. The reference's child at
        depth d+1 is an RLM only while d+1 < max_depth, so the same tree needs one more.
        """
        return self.max_depth + 1 if self.max_depth > 1 else self.max_depth

    def critical_path_s(self, root_latency_s: float, sub_latency_s: float) -> float:
        return self.root_calls * root_latency_s + self.sub_rounds * sub_latency_s


def needle(lines: int = 20_000) -> Workload:
    rng = random.Random(7)
    words = ["alpha", "bravo", "delta", "echo", "kilo", "lima", "oscar", "tango"]
    text = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(lines)]
    text.insert(lines * 2 // 3, "The secret code is NEEDLE-31337.")
    context = "\n".join(text)
    size = f"{len(context) / 1e6:.1f}M" if len(context) >= 1e6 else f"{len(context) // 1000}k"
    return Workload(
        f"needle-{size}",
        "needle",
        "What is the secret code?",
        context,
        "NEEDLE-31337",
        root_calls=3,
        sub_rounds=1,
    )


def aggregate(records: int = 600) -> Workload:
    rng = random.Random(11)
    good, bad = sorted(POSITIVE_WORDS), sorted(NEGATIVE_WORDS)
    rows, positives = [], 0
    for i in range(records):
        positive = rng.random() < 0.4
        positives += positive
        word = rng.choice(good if positive else bad)
        rows.append(f"id={i}; review: the product was {word} overall")
    return Workload(
        f"aggregate-{records}",
        "aggregate",
        "How many reviews are positive?",
        rows,
        str(positives),
        root_calls=3,
        sub_rounds=1,
    )


def recursion(max_depth: int = 2) -> Workload:
    facts = [f"Fact {i}: the tower number {i} is painted blue." for i in range(9)]
    filler = "Nothing important is said in this sentence at all. " * 12
    context = "\n".join(f"{filler}\n{fact}" for fact in facts)
    return Workload(
        f"recurse-depth{max_depth}",
        "recurse",
        "Which towers are painted blue?",
        context,
        None,  # checked by ``recursion_ok``: every tower is named
        max_depth=max_depth,
        # root, child(, grandchild): two root calls each, and the deepest one's llm_query.
        root_calls=2 * (max_depth + 1),
        sub_rounds=1,
    )


def recursion_ok(answer: str | None) -> bool:
    return answer is not None and all(f"tower number {i}" in answer for i in range(9))


def recover() -> Workload:
    return Workload(
        "recover",
        "recover",
        "How big is it?",
        ["a b", "c d e"],
        "2 items, 5 words",
        root_calls=2,
        sub_rounds=0,
    )


def correct(workload: Workload, answer: str | None) -> bool:
    if workload.policy == "recurse":
        return recursion_ok(answer)
    return answer == workload.expected


def suite(small: bool = False) -> list[Workload]:
    """The per-job overhead suite; ``small`` for smoke runs."""
    if small:
        return [needle(2_000), aggregate(100), recursion(max_depth=1), recover()]
    return [needle(), aggregate(), recursion(), recover()]


def batch_mix(small: bool = False) -> list[Workload]:
    """The jobs of the batch-makespan scenario, cycled: short, latency-bound jobs."""
    return [needle(4_000 if small else 8_000), aggregate(100), recover()]


def padding_text(size_bytes: int) -> str:
    """ASCII filler of exactly ``size_bytes`` characters, in lines."""
    line = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod\n"
    return (line * (size_bytes // len(line) + 1))[:size_bytes]
