"""4. Batch makespan: 200 jobs at 300 ms root / 150 ms sub provider latency.

The jobs cycle through short workloads (needle over ~500k characters, aggregation over
100 records, recovery). The ideal bound is the sum of the jobs' critical paths (root calls
and sequential sub-call rounds on their longest path, times the latencies) divided by the
number of jobs that can run at once. rlm-jobs: one orchestrator worker with C threads and
an llm pool; the reference: a ``multiprocessing`` pool of C processes. Both are judged
against their own bound; the makespan is one run (it is expensive), the per-job latency
distribution gives the median and p99.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench import procinfo, reference, stats, workloads
from bench.cluster import ORCHESTRATE_QUEUE, WorkerSpec, llm_spec
from bench.scenarios import RunContext, log, result
from rlm_jobs.submitter import JobHandle

ROOT_S = 0.3
SUB_S = 0.15
TARGET = 1.25


def run(ctx: RunContext) -> dict[str, Any]:
    cluster = ctx.cluster
    assert cluster.provider is not None
    n = ctx.size(200, 4)
    concurrency = ctx.size(32, 4)
    mix = workloads.batch_mix(small=ctx.smoke)
    jobs = [mix[i % len(mix)] for i in range(n)]
    bound = sum(w.critical_path_s(ROOT_S, SUB_S) for w in jobs) / concurrency
    metrics: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    notes: list[str] = []
    llm_threads = ctx.size(64, 16)
    orchestrator, _ = cluster.ensure_workers(
        [WorkerSpec(ORCHESTRATE_QUEUE, concurrency), llm_spec(llm_threads)]
    )
    cluster.provider.configure(root_latency_s=ROOT_S, sub_latency_s=SUB_S)
    try:
        log.info("s4: %d jobs on rlm-jobs, %d at a time", n, concurrency)
        cpu = procinfo.CpuMeter(cluster.cpu_groups())
        sandboxes = procinfo.SandboxCpuSampler([orchestrator.proc.pid])
        cpu.start()
        sandboxes.start()
        started_wall = time.time()
        started = time.perf_counter()
        handles: list[tuple[JobHandle, float]] = []
        for workload in jobs:
            handles.append(cluster.submit(workload.policy, workload.query, workload.context))
        submit_s = time.perf_counter() - started
        records = [cluster.wait(h, timeout_s=1800) for h, _ in handles]
        makespan = max(cluster.finished_at(r) for r in records) - started_wall
        used = dict(cpu.stop())
        used["sandbox runtimes"], sandbox_count = sandboxes.stop()
        latencies = [cluster.finished_at(r) - t for r, (_, t) in zip(records, handles, strict=True)]
        completed = sum(cluster.ok(r) for r in records)
    finally:
        cluster.provider.configure(root_latency_s=0, sub_latency_s=0)
    metrics["rlm-jobs: makespan"] = {"median": makespan, "n": 1, "unit": "s"}
    metrics["rlm-jobs: makespan / ideal bound"] = {"median": makespan / bound, "unit": "x"}
    metrics["rlm-jobs: job latency"] = stats.summary(latencies)
    metrics["rlm-jobs: jobs completed"] = {"median": completed, "n": n, "unit": "jobs"}
    metrics["rlm-jobs: submitting all jobs"] = {"median": submit_s, "unit": "s"}
    cores = os.cpu_count() or 1
    cpu_total = sum(used.values())
    metrics["rlm-jobs: CPU seconds per job"] = {
        "median": cpu_total / n,
        "unit": "s",
        "by_process": {k: round(v / n, 3) for k, v in used.items()},
        "sandboxes": sandbox_count,
    }
    metrics["rlm-jobs: CPU bound (CPU seconds / cores)"] = {
        "median": cpu_total / cores,
        "unit": "s",
    }
    targets[f"rlm-jobs makespan <= {TARGET}x ideal bound"] = stats.target(makespan / bound, TARGET)

    ref_makespan = None
    if ctx.reference_python is not None:
        log.info("s4: %d jobs on the reference, pool of %d", n, concurrency)
        cluster.provider.configure(root_latency_s=ROOT_S, sub_latency_s=SUB_S)
        provider_cpu = procinfo.CpuMeter({"provider": [-os.getpid()]})
        provider_cpu.start()
        try:
            data = reference.run(
                ctx.reference_python,
                cluster.provider.url,
                [(w, w.name) for w in jobs],
                ctx.workdir,
                mode="pool",
                pool_size=concurrency,
            )
        finally:
            cluster.provider.configure(root_latency_s=0, sub_latency_s=0)
        ref_makespan = float(data["makespan_s"])
        ref_cpu = float(data["pool_cpu_s"]) + provider_cpu.stop()["provider"]
        metrics["reference: CPU seconds per job"] = {
            "median": ref_cpu / n,
            "unit": "s",
            "by_process": {
                "pool processes": round(float(data["pool_cpu_s"]) / n, 3),
                "bench process (scripted provider)": round(provider_cpu.used["provider"] / n, 3),
            },
        }
        metrics["reference: CPU bound (CPU seconds / cores)"] = {
            "median": ref_cpu / cores,
            "unit": "s",
        }
        runs = data["runs"]
        metrics["reference: makespan"] = {"median": ref_makespan, "n": 1, "unit": "s"}
        metrics["reference: makespan / ideal bound"] = {
            "median": ref_makespan / bound,
            "unit": "x",
        }
        metrics["reference: job latency"] = stats.summary([r["seconds"] for r in runs])
        metrics["reference: jobs completed"] = {
            "median": sum(
                workloads.correct(w, r["answer"]) for w, r in zip(jobs, runs, strict=True)
            ),
            "n": n,
            "unit": "jobs (correct answers)",
        }
        metrics["rlm-jobs makespan / reference makespan"] = {
            "median": makespan / ref_makespan,
            "unit": "x",
        }
    else:
        notes.append(f"reference not run: {ctx.reference_problem}")
    notes.append(
        "The reference's recover job takes one more root call than ours (it loses the "
        "variables of a cell that raised), so its true bound is slightly higher than the "
        "shared one."
    )
    return result(
        "Batch makespan vs the ideal bound",
        config={
            "jobs": n,
            "mix": [w.name for w in mix],
            "root_latency_s": ROOT_S,
            "sub_latency_s": SUB_S,
            "concurrency": concurrency,
            "ideal_bound_s": bound,
            "critical_paths_s": {w.name: w.critical_path_s(ROOT_S, SUB_S) for w in mix},
            "workers": f"1 orchestrator (threads, {concurrency}), 1 llm (threads, {llm_threads}); "
            f"reference: multiprocessing pool of {concurrency}",
        },
        metrics=metrics,
        targets=targets,
        notes=notes,
        plot={
            "kind": "makespan",
            "bound": bound,
            "bars": {"rlm-jobs": makespan, **({"reference": ref_makespan} if ref_makespan else {})},
        },
    )
