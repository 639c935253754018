"""1. Sub-call overhead: one ``llm_query`` round trip vs a bare Celery echo round trip.

The probe cell calls ``llm_query`` N times in a row and times each call inside the sandbox
(sandbox -> orchestrator -> ``rlm.llm`` task -> llm worker -> provider -> back). Each call's
provider time, as the llm worker measured it, comes from the trajectory, so the time
*added* by rlm-jobs is the round trip minus that. Baselines in the same run, on the same
Redis: a bare Celery echo task answered through a Redis list + BLPOP (what our dispatcher
does) and through the result backend; and the provider call alone, made from this process
with the same client stack the llm workers use.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from bench import echo, stats
from bench.cluster import echo_spec
from bench.scenarios import RunContext, log, result, standard_workers
from rlm_jobs.api import RLM
from rlm_jobs.clients.router import LLMRouter

WARMUP = 5
TARGET_RATIO = 1.5


def _echo_round_trips(redis_url: str, n: int, via_backend: bool) -> list[float]:
    app = echo.app
    client = redis.Redis.from_url(redis_url, socket_timeout=60)
    reply_key = f"bench:echo:{uuid.uuid4().hex}"
    out: list[float] = []
    try:
        with app.producer_or_acquire() as producer:
            for i in range(n + WARMUP):
                started = time.perf_counter()
                if via_backend:
                    app.send_task(echo.ECHO_TASK, args=["", str(i)], producer=producer).get(
                        timeout=30
                    )
                else:
                    app.send_task(echo.ECHO_TASK, args=[reply_key, str(i)], producer=producer)
                    if client.blpop([reply_key], timeout=30) is None:
                        raise TimeoutError("the echo worker did not answer")
                if i >= WARMUP:
                    out.append(time.perf_counter() - started)
    finally:
        client.close()
    return out


def _provider_direct(ctx: RunContext, n: int) -> list[float]:
    router = LLMRouter(ctx.cluster.settings)
    out: list[float] = []
    try:
        for i in range(n + WARMUP):
            started = time.perf_counter()
            router.complete("scripted/bench-pingpong", [{"role": "user", "content": f"ping {i}"}])
            if i >= WARMUP:
                out.append(time.perf_counter() - started)
    finally:
        router.close()
    return out


def _split(answer: str | None, trajectory: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Round trips measured in the sandbox, and the same minus each call's provider time."""
    round_trips = json.loads(answer or "[]")
    calls = [
        c
        for entry in trajectory
        if entry.get("type") == "iteration" or "code_blocks" in entry
        for block in entry.get("code_blocks", [])
        for c in block["result"]["rlm_calls"]
    ]
    provider = {c["prompt"]: float(c["execution_time"]) for c in calls}
    added = [rt - provider.get(f"ping {i}", 0.0) for i, rt in enumerate(round_trips)]
    return round_trips[WARMUP:], added[WARMUP:]


def run(ctx: RunContext) -> dict[str, Any]:
    cluster = ctx.cluster
    n = ctx.size(400, 20)
    assert cluster.provider is not None
    cluster.provider.configure(root_latency_s=0, sub_latency_s=0)
    cluster.ensure_workers([*standard_workers(), echo_spec(8)])
    # Interleaved blocks: load from elsewhere on the machine drifts over minutes, and every
    # variant should see the same drift.
    blocks = ctx.size(4, 1)
    per_block = n // blocks
    echo_blpop: list[float] = []
    echo_backend: list[float] = []
    provider: list[float] = []
    service_rt: list[float] = []
    service_added: list[float] = []
    library_rt: list[float] = []
    library_added: list[float] = []
    with RLM(
        backend="scripted",
        backend_kwargs={"model_name": "bench-pingpong"},
        settings=cluster.settings,
    ) as rlm:
        for block in range(blocks):
            log.info("s1: block %d of %d", block + 1, blocks)
            echo_blpop += _echo_round_trips(cluster.redis_url, per_block, via_backend=False)
            echo_backend += _echo_round_trips(cluster.redis_url, per_block, via_backend=True)
            provider += _provider_direct(ctx, per_block)
            query = f"pingpong n={per_block + WARMUP}"
            handle, _ = cluster.submit("bench-pingpong", query, "x")
            record = cluster.wait(handle)
            answer = record.result.answer if record.result else None
            rt, added = _split(answer, handle.trajectory())
            service_rt += rt
            service_added += added
            done = rlm.completion("x", root_prompt=query)
            rt, added = _split(done.response, done.trajectory)
            library_rt += rt
            library_added += added

    metrics = {
        "bare_echo_blpop": stats.summary(echo_blpop),
        "bare_echo_result_backend": stats.summary(echo_backend),
        "provider_call_direct": stats.summary(provider),
        "llm_query_service_round_trip": stats.summary(service_rt),
        "llm_query_service_added": stats.summary(service_added),
        "llm_query_library_round_trip": stats.summary(library_rt),
        "llm_query_library_added": stats.summary(library_added),
    }
    bare = metrics["bare_echo_blpop"]["median"]
    added_ratio = stats.ratio(metrics["llm_query_service_added"]["median"], bare)
    raw_ratio = stats.ratio(metrics["llm_query_service_round_trip"]["median"], bare)
    metrics["added_p50_over_bare_p50"] = {"median": added_ratio, "unit": "x"}
    metrics["round_trip_p50_over_bare_p50"] = {"median": raw_ratio, "unit": "x"}
    return result(
        "Sub-call overhead (llm_query round trip vs bare Celery echo)",
        config={
            "calls": n,
            "interleaved_blocks": blocks,
            "warmup_calls_dropped": WARMUP,
            "provider_latency_s": 0,
            "workers": "1 orchestrator (threads, 4), 1 llm (threads, 16), 1 echo (threads, 8)",
        },
        metrics=metrics,
        targets={
            "service llm_query added time p50 <= 1.5x bare echo (BLPOP) p50": stats.target(
                added_ratio, TARGET_RATIO
            ),
        },
        notes=[
            "Added time = round trip measured in the sandbox minus the provider call time the "
            "llm worker measured for that call; the raw round trip is reported too.",
            "The bare echo uses a plain Celery config (no task events, no acks_late); the llm "
            "tasks of rlm-jobs send task events and ack late.",
        ],
        plot={
            "kind": "box",
            "unit": "ms",
            "series": {
                "echo BLPOP": echo_blpop,
                "echo backend": echo_backend,
                "provider direct": provider,
                "llm_query service": service_rt,
                "service added": service_added,
                "llm_query library": library_rt,
            },
        },
    )
