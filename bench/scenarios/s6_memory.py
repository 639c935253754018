"""6. Memory and broker traffic of one job with a 100 MB context.

The job (``bench-len``) reads its whole context in the sandbox, sends eight 1 kB slices
as sub-calls and reports the sandbox's own peak RSS (``VmHWM``). Measured around it:

- the orchestrator worker process: RSS before, ``VmHWM`` after (the peak is reset first);
- every command that reached Redis while the job ran, from ``MONITOR``: the Celery
  messages pushed onto ``rlm.orchestrate`` and ``rlm.llm`` (count, bytes, largest, and
  whether any carried a marker planted in the context), pub/sub, and the rest;
- ``INFO stats`` network byte counters (these include the sandbox loading the context).

The context is stored before the monitor starts and the job is created and enqueued
without storing it again, so the 100 MB upload is not mistaken for job traffic.
"""

from __future__ import annotations

import base64
import codecs
import json
import re
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import redis

from bench import procinfo, stats, workloads
from bench.cluster import LLM_QUEUE, ORCHESTRATE_QUEUE
from bench.scenarios import RunContext, log, result, standard_workers
from rlm_jobs.contexts import put_context
from rlm_jobs.models import JobSpec, Limits
from workers.enqueue import celery_enqueuer

MB = 1024 * 1024
STOP = "bench-monitor-stop"
_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
TARGET_GROWTH = 1.2


class BrokerTap:
    """``MONITOR`` in a thread, summarised per kind of traffic."""

    def __init__(self, url: str, marker: bytes) -> None:
        self._url = url
        self._client = redis.Redis.from_url(url, socket_timeout=300)
        self._marker = marker
        self.kinds: dict[str, dict[str, int]] = defaultdict(
            lambda: {"count": 0, "bytes": 0, "largest": 0}
        )
        self.marker_in_messages = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def _kind(self, args: list[bytes]) -> str:
        name = args[0].upper()
        key = args[1] if len(args) > 1 else b""
        if name in (b"LPUSH", b"RPUSH"):
            if key.startswith(ORCHESTRATE_QUEUE.encode()):
                return "celery message: rlm.orchestrate"
            if key.startswith(LLM_QUEUE.encode()):
                return "celery message: rlm.llm"
            return "list push (sub-call replies)"
        if name == b"PUBLISH":
            return "publish: sandbox wire" if key.startswith(b"rlm:sbx") else "publish: other"
        if name in (b"SET", b"SETEX") and key.startswith(b"rlm:sbx"):
            return "set: sandbox wire copies"
        return "other commands"

    def _record(self, args: list[bytes]) -> None:
        kind = self._kind(args)
        size = sum(len(a) for a in args)
        entry = self.kinds[kind]
        entry["count"] += 1
        entry["bytes"] += size
        entry["largest"] = max(entry["largest"], size)
        if kind.startswith("celery message") and len(args) > 2:
            try:
                envelope = json.loads(args[2])
                body = base64.b64decode(envelope.get("body", ""))
            except (ValueError, TypeError):
                body = args[2]
            if self._marker in body or self._marker in args[2]:
                self.marker_in_messages += 1

    def _run(self) -> None:
        with self._client.monitor() as monitor:  # type: ignore[no-untyped-call]
            self._ready.set()
            while True:
                raw = monitor.connection.read_response()
                if not isinstance(raw, bytes):
                    continue
                # <time> [<db> <client>] "arg" "arg" ...
                args = [codecs.escape_decode(a)[0] for a in _ARG.findall(raw)]
                if not args:
                    continue
                if args[0].upper() == b"ECHO" and args[-1] == STOP.encode():
                    return
                self._record(args)

    def stop(self) -> None:
        client = redis.Redis.from_url(self._url, socket_timeout=10)
        client.echo(STOP)
        client.close()
        self._thread.join(60)
        self._client.close()


def _net(client: redis.Redis) -> tuple[int, int]:
    info = client.info("stats")
    return int(info["total_net_input_bytes"]), int(info["total_net_output_bytes"])


def run(ctx: RunContext) -> dict[str, Any]:
    cluster = ctx.cluster
    size = ctx.size(100, 5) * MB
    marker = f"BENCH-MARKER-{uuid.uuid4().hex}"
    orchestrator, _ = cluster.ensure_workers(standard_workers())
    # Warm-up: imports, clients and the pub/sub hub exist before anything is measured.
    handle, _ = cluster.submit("bench-len", "len", workloads.padding_text(20_000))
    cluster.wait(handle)

    text = workloads.padding_text(size - len(marker) - 1) + marker + "\n"
    ref = put_context(cluster.client, text)
    spec = JobSpec(
        query="How long is the context?",
        context=ref,
        model="scripted/bench-len",
        limits=Limits(),
    )
    del text
    pid = orchestrator.proc.pid
    before = procinfo.status(pid)
    peak_reset = procinfo.reset_peak(pid)
    net_before = _net(cluster.client)
    tap = BrokerTap(cluster.redis_url, marker.encode())
    tap.start()
    job_id = uuid.uuid4().hex
    started = time.perf_counter()
    cluster.submitter.store.create_job(job_id, spec)
    celery_enqueuer(cluster.settings, cluster.app)(job_id)
    record = cluster.wait(cluster.submitter.job(job_id), timeout_s=600)
    elapsed = time.perf_counter() - started
    after = procinfo.status(pid)
    net_after = _net(cluster.client)
    tap.stop()
    answer = json.loads(record.result.answer if record.result and record.result.answer else "{}")
    growth = after["VmHWM"] - before["VmRSS"]
    celery = {k: v for k, v in tap.kinds.items() if k.startswith("celery message")}
    largest = max((v["largest"] for v in celery.values()), default=0)
    log.info("s6: orchestrator growth %.1f MB, broker %s", growth / MB, dict(tap.kinds))
    metrics: dict[str, Any] = {
        "context size": {"median": size / MB, "unit": "MB"},
        "job wall time": {"median": elapsed, "n": 1, "unit": "s"},
        "orchestrator RSS before": {"median": before["VmRSS"] / MB, "unit": "MB"},
        "orchestrator peak RSS (VmHWM) during the job": {
            "median": after["VmHWM"] / MB,
            "unit": "MB",
        },
        "orchestrator growth / context size": {"median": growth / size, "unit": "x"},
        "sandbox peak RSS (VmHWM, measured by the cell)": {
            "median": answer.get("sandbox_vmhwm_kb", 0) / 1024,
            "unit": "MB",
        },
        "largest Celery message": {"median": largest, "unit": "bytes"},
        "Celery messages carrying the context marker": {"median": tap.marker_in_messages},
        "redis net input during the job": {
            "median": (net_after[0] - net_before[0]) / MB,
            "unit": "MB",
        },
        "redis net output during the job": {
            "median": (net_after[1] - net_before[1]) / MB,
            "unit": "MB",
        },
    }
    for kind, entry in sorted(tap.kinds.items()):
        metrics[f"broker traffic: {kind}"] = {
            "median": entry["bytes"],
            "count": entry["count"],
            "largest": entry["largest"],
            "unit": "bytes",
        }
    context_free = tap.marker_in_messages == 0 and largest < 64 * 1024
    return result(
        "Memory and broker traffic of a 100 MB context job",
        config={
            "context_bytes": size,
            "peak_reset_with_clear_refs": peak_reset,
            "policy": "bench-len: len(context), 8 sub-calls of 1 kB slices, VmHWM",
        },
        metrics=metrics,
        targets={
            "context never in a Celery message": {
                "limit": "no marker, every message < 64 kB",
                "value": f"{tap.marker_in_messages} with marker, largest {largest} B",
                "met": context_free,
            },
            f"orchestrator growth <= {TARGET_GROWTH}x context": stats.target(
                growth / size, TARGET_GROWTH
            ),
        },
        notes=[
            "MONITOR shows commands, not replies: the sandbox's GET of the context shows up "
            "only in the INFO output byte counter.",
        ],
    )
