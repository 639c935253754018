"""8. A 200-job batch under a cluster-wide rpm limit: the limit, not rlm-jobs, sets the pace.

Every worker (one orchestrator, two llm workers) runs with ``RLM_JOBS_RATE_LIMITS`` holding
one provider-wide entry for ``scripted``, so each job's root calls and sub-calls (the
scripted ``exec`` model runs a cell that asks ``SUBS`` sub-calls) share one limit. The time
the limit itself allows is ``(calls - 1) * 60 / rpm``, with ``calls`` counted from the
provider's request log; the makespan runs from the first submission to the last job's
finish. Target: makespan within 1.1 x that time. Also judged: smoothness, the busiest
1-second window of requests against ``rpm / 60 * 1.05 + 1``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench import stats
from bench.cluster import LLM_QUEUE, ORCHESTRATE_QUEUE, WorkerSpec
from bench.scenarios import RunContext, log, result
from rlm_jobs.submitter import Document

SUBS = 2
TARGET = 1.1
LATENCY_S = 0.05


def _code(job: int) -> str:
    return (
        f"ask = 'Question: which part?\\n\\nText:\\nThis is part {job} '\n"
        f"replies = llm_query_batched([f'{{ask}}{{i}}.' for i in range({SUBS})])\n"
        "print(sum(r.startswith('This is') for r in replies))\n"
    )


def _busiest_second(times: list[float]) -> int:
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def run(ctx: RunContext) -> dict[str, Any]:
    cluster = ctx.cluster
    assert cluster.provider is not None
    n = ctx.size(200, 10)
    rpm = ctx.size(900, 600)
    env = {"RLM_JOBS_RATE_LIMITS": json.dumps({"scripted": {"rpm": rpm}})}
    llm_env = {**env, "RLM_JOBS_LLM_WORKER_CONCURRENCY": "16"}
    cluster.ensure_workers(
        [
            WorkerSpec(ORCHESTRATE_QUEUE, 32, env=env),
            WorkerSpec(LLM_QUEUE, 16, env=llm_env),
            WorkerSpec(LLM_QUEUE, 16, env=llm_env),
        ]
    )
    docs = [Document(id=f"job-{i}", context="x", query=_code(i)) for i in range(n)]
    cluster.provider.reset()
    cluster.provider.configure(root_latency_s=LATENCY_S, sub_latency_s=LATENCY_S)
    try:
        log.info("s8: %d jobs at %d rpm", n, rpm)
        started = time.time()
        batch, _ = cluster.submitter.submit_batch(docs, None, model="scripted/exec")
        batch.wait(timeout_s=1800, poll_s=0.05)
        records = [j.record() for j in batch.jobs()]
    finally:
        cluster.provider.configure(root_latency_s=0, sub_latency_s=0)
    requests = cluster.provider.requests()
    makespan = max(cluster.finished_at(r) for r in records) - started
    calls = len(requests)
    allowed_s = (calls - 1) * 60 / rpm
    busiest = _busiest_second([r.timestamp for r in requests])
    smooth_limit = rpm / 60 * 1.05 + 1
    waits = [float(j.progress().get("rate_limited_s", 0.0)) for j in batch.jobs()]
    completed = sum(cluster.ok(r) for r in records)
    metrics: dict[str, Any] = {
        "makespan": {"median": makespan, "n": 1, "unit": "s"},
        "time the limit allows": {"median": allowed_s, "unit": "s", "calls": calls},
        "makespan / time the limit allows": {"median": makespan / allowed_s, "unit": "x"},
        "busiest 1-second window": {"median": busiest, "unit": "calls", "allowed": smooth_limit},
        "rate-limit wait per job": stats.summary(waits),
        "jobs completed": {"median": completed, "n": n, "unit": "jobs"},
        "provider errors": {"median": sum(r.outcome != "ok" for r in requests), "unit": "calls"},
    }
    targets = {
        f"makespan <= {TARGET}x the time the limit allows": stats.target(
            makespan / allowed_s, TARGET
        ),
        "busiest second <= rpm/60 x 1.05 + 1": stats.target(busiest, smooth_limit),
    }
    return result(
        "Rate-limited batch: the limit sets the pace",
        config={
            "jobs": n,
            "rpm": rpm,
            "calls_per_job": 2 + SUBS,
            "provider_latency_s": LATENCY_S,
            "workers": "1 orchestrator (threads, 32), 2 llm (threads, 16 each); "
            "rate limit entry 'scripted' on every worker",
        },
        metrics=metrics,
        targets=targets,
        notes=[
            "Every job's root and sub-calls share one provider-wide limit; the bound counts "
            "every request the provider saw (retries would count too; there were none unless "
            "'provider errors' says so)."
        ],
    )
