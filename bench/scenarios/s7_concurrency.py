"""7. Concurrency: one orchestrator process holding 200 jobs that wait on a slow provider.

One orchestrator worker with 200 threads; every job opens its sandbox and then waits in its
first root call, which a dedicated scripted provider holds for minutes. Once every job is
waiting (its progress says iteration 1), we count what the orchestrator process holds:
Redis connections (``CLIENT LIST`` entries whose TCP port belongs to the process, by
/proc), threads and RSS; and the sandboxes' number and total RSS. The provider is then
stopped, which fails the held calls (the workers run with no retries) and ends the jobs.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import procinfo, stats
from bench.cluster import ORCHESTRATE_QUEUE, WorkerSpec, wait_for
from bench.scenarios import RunContext, log, result
from rlm_jobs.testing.provider import ScriptedProvider

TARGET_CONNECTIONS = 20
HOLD_S = 1800.0
# A sandbox runtime's RSS here is ~40 MB; keep well clear of the machine's memory.
SANDBOX_BUDGET_BYTES = 60 * 1024 * 1024


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def run(ctx: RunContext) -> dict[str, Any]:
    cluster = ctx.cluster
    wanted = ctx.size(200, 6)
    n = min(wanted, max(6, _available_bytes() * 2 // 3 // SANDBOX_BUDGET_BYTES))
    notes: list[str] = []
    if n < wanted:
        notes.append(f"ran {n} jobs, not {wanted}: not enough free memory for the sandboxes")
    slow = ScriptedProvider(root_latency_s=HOLD_S).start()
    [orchestrator] = cluster.ensure_workers(
        [
            WorkerSpec(
                ORCHESTRATE_QUEUE,
                n,
                env={
                    "RLM_JOBS_SCRIPTED_BASE_URL": slow.url,
                    "RLM_JOBS_MAX_RETRIES": "0",
                    "RLM_JOBS_REQUEST_TIMEOUT_S": str(HOLD_S + 60),
                },
            )
        ]
    )
    pid = orchestrator.proc.pid
    idle = procinfo.status(pid)
    handles = []
    try:
        started = time.perf_counter()
        handles = [cluster.submit("bench-wait", f"wait {i}", "x")[0] for i in range(n)]

        def settled() -> tuple[int, int]:
            """(jobs waiting in their first root call, jobs already finished)."""
            records = cluster.submitter.store.get_many(h.id for h in handles)
            finished = sum(1 for r in records if r.status.finished)
            waiting = sum(
                1
                for h, r in zip(handles, records, strict=True)
                if not r.status.finished and int(h.progress().get("iteration", 0)) >= 1
            )
            return waiting, finished

        deadline = time.monotonic() + ctx.size(150, 60)
        while True:
            waiting_jobs, finished_jobs = settled()
            if waiting_jobs + finished_jobs >= n or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        ramp_s = time.perf_counter() - started
        records = cluster.submitter.store.get_many(h.id for h in handles)
        statuses = Counter(r.status.value for r in records)
        time.sleep(1.0)  # let lease renewals and polls settle into their steady state
        ports = procinfo.tcp_local_ports(pid)
        clients = cluster.client.client_list()
        mine = [
            c
            for c in clients
            if c["addr"].startswith("127.0.0.1:") and int(c["addr"].rsplit(":", 1)[1]) in ports
        ]
        by_cmd = Counter(c.get("cmd", "?") for c in mine)
        unix = sum(
            1 for c in clients if c["addr"].startswith("/") or c.get("laddr", "").startswith("/")
        )
        waiting = procinfo.status(pid)
        sandboxes = procinfo.sandbox_runtimes(pid)
        sandbox_rss = 0
        for spid in sandboxes:
            with contextlib.suppress(OSError, KeyError):
                sandbox_rss += procinfo.status(spid)["VmRSS"]
        log.info(
            "s7: %d of %d jobs waiting (%d finished early) after %.1f s; %d orchestrator "
            "connections %s",
            waiting_jobs,
            n,
            finished_jobs,
            ramp_s,
            len(mine),
            dict(by_cmd),
        )
    finally:
        for handle in handles:
            handle.cancel("bench: scenario over")
        slow.stop()  # held calls fail at once (no retries): every job ends
        try:
            wait_for(lambda: all(h.status().finished for h in handles), 300, "the jobs to end", 0.5)
        finally:
            cluster.stop_workers([orchestrator])
    mb = 1024 * 1024
    worker_log = orchestrator.log()
    pool_errors = worker_log.count("MaxConnectionsError")
    requeued = worker_log.count("lost its worker; requeued")
    if finished_jobs:
        notes.append(
            f"{finished_jobs} of {n} jobs ended before the provider answered; the orchestrator "
            f"log has {pool_errors} MaxConnectionsError ('Too many connections') tracebacks "
            f"and {requeued} 'lost its worker; requeued' warnings."
        )
    metrics: dict[str, Any] = {
        "jobs submitted": {"median": n, "unit": "jobs"},
        "jobs waiting at once": {"median": waiting_jobs, "unit": "jobs"},
        "jobs that ended before the provider answered": {
            "median": finished_jobs,
            "unit": "jobs",
            "final_statuses": dict(statuses),
        },
        "MaxConnectionsError tracebacks in the orchestrator log": {"median": pool_errors},
        "jobs requeued by the reaper (lease lapsed)": {"median": requeued},
        "time until every job waited or ended": {"median": ramp_s, "n": 1, "unit": "s"},
        "orchestrator Redis connections": {
            "median": len(mine),
            "unit": "connections",
            "by_last_command": dict(by_cmd),
        },
        "all Redis clients (incl. sandboxes)": {"median": len(clients), "unit": "connections"},
        "Redis clients over the Unix socket (sandboxes)": {"median": unix, "unit": "connections"},
        "orchestrator threads": {
            "median": waiting["Threads"],
            "idle": idle["Threads"],
            "unit": "threads",
        },
        "orchestrator RSS": {
            "median": waiting["VmRSS"] / mb,
            "idle": idle["VmRSS"] / mb,
            "unit": "MB",
        },
        "orchestrator RSS per waiting job": {
            "median": (waiting["VmRSS"] - idle["VmRSS"]) / n / mb,
            "unit": "MB",
        },
        "sandbox processes": {"median": len(sandboxes), "unit": "processes"},
        "sandbox RSS, total": {"median": sandbox_rss / mb, "unit": "MB"},
    }
    return result(
        f"Concurrency: {n} jobs waiting in one orchestrator process",
        config={"jobs": n, "orchestrator_threads": n, "provider_root_latency_s": HOLD_S},
        metrics=metrics,
        targets={
            f"orchestrator Redis connections <= {TARGET_CONNECTIONS}": stats.target(
                float(len(mine)), TARGET_CONNECTIONS
            )
        },
        notes=notes,
    )
