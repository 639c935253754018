"""5. Scaling: sub-call throughput with 1, 2 and 4 llm worker processes.

Latency-bound load: every llm worker process has the same number of threads, the provider
answers after a fixed latency, and one job fans out enough prompts to keep every thread
busy for several rounds. Throughput = prompts / wall time of the batch (measured in the
sandbox). Ideal scaling is linear in the number of processes (the slots double).
"""

from __future__ import annotations

import json
from typing import Any

from bench import procinfo, stats
from bench.cluster import ORCHESTRATE_QUEUE, WorkerSpec, llm_spec
from bench.scenarios import RunContext, log, result

THREADS = 16
TARGET = 3.5


def run(ctx: RunContext) -> dict[str, Any]:
    cluster = ctx.cluster
    assert cluster.provider is not None
    latency_s = 0.5 if not ctx.smoke else 0.2
    counts = [1, 2] if ctx.smoke else [1, 2, 4]
    rounds = ctx.size(4, 2)
    repeats = ctx.size(2, 1)
    prompts = max(counts) * THREADS * rounds
    metrics: dict[str, Any] = {}
    throughput: dict[int, list[float]] = {}
    warmup = ctx.size(1, 0)
    for count in counts:
        cluster.ensure_workers([WorkerSpec(ORCHESTRATE_QUEUE, 4), *[llm_spec(THREADS)] * count])
        cluster.provider.configure(sub_latency_s=latency_s)
        cpu = procinfo.CpuMeter(cluster.cpu_groups())
        try:
            values: list[float] = []
            for i in range(repeats + warmup):
                if i >= warmup:
                    cpu.start()
                handle, _ = cluster.submit("bench-fanout", f"fanout n={prompts}", "x")
                record = cluster.wait(handle)
                answer = json.loads((record.result.answer if record.result else None) or "{}")
                if i >= warmup:
                    cpu.stop()
                    values.append(prompts / float(answer["wall_s"]))
        finally:
            cluster.provider.configure(sub_latency_s=0)
        throughput[count] = values
        log.info("s5: %d processes: %s calls/s", count, [round(v, 1) for v in values])
        metrics[f"{count} process(es): throughput"] = stats.summary(values, unit="calls/s")
        metrics[f"{count} process(es): CPU ms per sub-call"] = {
            "median": sum(cpu.used.values()) * 1000 / (prompts * repeats),
            "unit": "ms",
            "by_process": {
                k: round(v * 1000 / (prompts * repeats), 2) for k, v in cpu.used.items()
            },
        }
    base = metrics["1 process(es): throughput"]["median"]
    for count in counts[1:]:
        metrics[f"{count} process(es) / 1 process"] = {
            "median": stats.ratio(metrics[f"{count} process(es): throughput"]["median"], base),
            "unit": "x",
        }
    top = counts[-1]
    value = metrics[f"{top} process(es) / 1 process"]["median"]
    return result(
        "Scaling of sub-call throughput with llm worker processes",
        config={
            "threads_per_process": THREADS,
            "provider_sub_latency_s": latency_s,
            "prompts_per_batch": prompts,
            "repeats": repeats,
            "ideal_throughput_per_process": THREADS / latency_s,
        },
        metrics=metrics,
        targets={
            f"{top} processes >= {TARGET}x one process": stats.target(
                value, TARGET if top == 4 else TARGET * top / 4, at_least=True
            )
        },
        notes=[
            "Smoke runs compare 1 and 2 processes against a proportional target.",
        ],
        plot={
            "kind": "scaling",
            "throughput": {str(k): v for k, v in throughput.items()},
            "ideal_per_process": THREADS / latency_s,
        },
    )
