"""2. Fan-out: one ``llm_query_batched`` of N prompts at 500 ms provider latency.

The llm pool has N threads in all, split over as many worker processes as there are cores
(at most 4), so every prompt can be in flight at once and the ideal wall time is one
provider latency. Reported: the batch's wall time measured in the sandbox / the latency.
Baseline in the same run: a naive Celery ``group`` of N tasks that each sleep the latency,
collected through the result backend, on an echo pool of the same shape.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from celery import group

from bench import echo, procinfo, stats
from bench.cluster import ORCHESTRATE_QUEUE, WorkerSpec, echo_spec, llm_spec
from bench.scenarios import RunContext, log, result

LATENCY_S = 0.5
TARGET_N = 200
TARGET_RATIO = 1.3


def _processes() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _group_baseline(ctx: RunContext, n: int, latency_s: float, repeats: int) -> list[float]:
    procs = _processes()
    ctx.cluster.ensure_workers(
        [WorkerSpec(ORCHESTRATE_QUEUE, 4), *[echo_spec(math.ceil(n / procs))] * procs]
    )
    out: list[float] = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        group(echo.sleep.s(latency_s) for _ in range(n)).apply_async().get(timeout=120)
        if i > 0:  # the first round warms the pools up
            out.append((time.perf_counter() - started) / latency_s)
    return out


def run(ctx: RunContext) -> dict[str, Any]:
    cluster = ctx.cluster
    assert cluster.provider is not None
    sizes = [32] if ctx.smoke else [50, TARGET_N, 1000]
    repeats = {50: 5, TARGET_N: 5, 1000: 2}
    procs = _processes()
    metrics: dict[str, Any] = {}
    series: dict[str, list[float]] = {}
    baseline: dict[str, list[float]] = {}
    for n in sizes:
        reps = repeats.get(n, 1)
        cluster.ensure_workers(
            [
                WorkerSpec(ORCHESTRATE_QUEUE, 4),
                *[llm_spec(math.ceil(n / procs))] * procs,
            ]
        )
        cluster.provider.configure(sub_latency_s=LATENCY_S)
        cpu = procinfo.CpuMeter(cluster.cpu_groups())
        try:
            ratios: list[float] = []
            errors = 0
            for i in range(reps + 1):
                if i > 0:
                    cpu.start()
                handle, _ = cluster.submit("bench-fanout", f"fanout n={n}", "x")
                record = cluster.wait(handle)
                answer = json.loads((record.result.answer if record.result else None) or "{}")
                if i == 0:
                    continue  # warm-up: worker threads and connections are created
                cpu.stop()
                ratios.append(float(answer["wall_s"]) / LATENCY_S)
                errors += int(answer.get("errors", 0))
            log.info("s2: n=%d wall/latency %s", n, [round(r, 2) for r in ratios])
        finally:
            cluster.provider.configure(sub_latency_s=0)
        metrics[f"n={n}: wall/latency"] = {**stats.summary(ratios, unit="x"), "errors": errors}
        metrics[f"n={n}: CPU ms per sub-call, whole job"] = {
            "median": sum(cpu.used.values()) * 1000 / (n * reps),
            "unit": "ms",
            "by_process": {k: round(v * 1000 / (n * reps), 2) for k, v in cpu.used.items()},
        }
        series[f"n={n}"] = ratios
        if not ctx.smoke:  # the baseline needs a pool of its own: full runs only
            base = _group_baseline(ctx, n, LATENCY_S, reps)
            metrics[f"n={n}: naive Celery group/latency"] = stats.summary(base, unit="x")
            baseline[f"n={n}"] = base
    key = f"n={TARGET_N}: wall/latency"
    value = metrics[key]["median"] if key in metrics else None
    return result(
        "Fan-out (llm_query_batched wall time / provider latency)",
        config={
            "provider_sub_latency_s": LATENCY_S,
            "sizes": sizes,
            "repeats": {n: repeats.get(n, 1) for n in sizes},
            "llm_worker_processes": procs,
            "llm_threads_total": "N (ceil(N / processes) per process)",
        },
        metrics=metrics,
        targets={
            f"n={TARGET_N}: wall/latency <= {TARGET_RATIO}": stats.target(value, TARGET_RATIO)
        },
        notes=[
            "The baseline's tasks only sleep (no HTTP), so it measures Celery's own dispatch "
            "and result collection; rlm-jobs' number includes the provider's HTTP handling.",
            "The scripted provider runs in the bench process: one Python process answering "
            "every prompt of the batch.",
        ],
        plot={"kind": "fanout", "series": series, "baseline": baseline, "target": TARGET_RATIO},
    )
