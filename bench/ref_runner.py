"""Runs jobs on the reference implementation (PyPI ``rlms``) in its own virtualenv.

Started by ``bench.reference`` as ``<ref-venv>/bin/python bench/ref_runner.py SPEC``; it
imports nothing from rlm-jobs (the reference's environment does not have it) and prints
one JSON object on stdout. SPEC is a JSON file::

    {"base_url": ..., "mode": "sequential" | "pool", "pool_size": 8, "repeats": 3,
     "jobs": [{"name": ..., "model": "ref-needle", "query": ..., "context_file": ...,
               "max_depth": 1}, ...]}

``sequential`` runs every job ``repeats`` times, one at a time, and reports each time;
``pool`` runs the job list once on a ``multiprocessing`` pool and reports the makespan.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from typing import Any

_CONTEXTS: dict[str, Any] = {}


def _context(path: str) -> Any:
    if path not in _CONTEXTS:
        with open(path, encoding="utf-8") as f:
            _CONTEXTS[path] = json.load(f)
    return _CONTEXTS[path]


def run_job(base_url: str, job: dict[str, Any]) -> dict[str, Any]:
    from rlm import RLM  # type: ignore[import-not-found]

    context = _context(job["context_file"])
    started_wall = time.time()
    started = time.perf_counter()
    error = None
    answer = None
    try:
        rlm = RLM(
            backend="openai",
            backend_kwargs={"model_name": job["model"], "base_url": base_url, "api_key": "x"},
            environment="local",
            max_depth=job["max_depth"],
            max_iterations=job.get("max_iterations", 30),
        )
        result = rlm.completion(context, root_prompt=job["query"])
        answer = result.response
        rlm.close()
    except Exception as exc:  # reported, not raised: one failed job is a data point
        error = f"{type(exc).__name__}: {exc}"
    return {
        "name": job["name"],
        "seconds": time.perf_counter() - started,
        "started": started_wall,
        "finished": time.time(),
        "answer": answer,
        "error": error,
    }


def _pool_job(args: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return run_job(*args)


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    from importlib.metadata import version

    import rlm  # noqa: F401  (fail here, clearly, if the environment is broken)

    out: dict[str, Any] = {"rlms_version": version("rlms"), "python": sys.version.split()[0]}
    base_url = spec["base_url"]
    for job in spec["jobs"]:
        _context(job["context_file"])  # loaded once, before the clock and any fork
    if spec["mode"] == "sequential":
        # One warm-up job per workload: imports and first connections are not per-job cost.
        for job in spec["jobs"]:
            run_job(base_url, job)
        runs = []
        for _ in range(spec["repeats"]):
            for job in spec["jobs"]:
                runs.append(run_job(base_url, job))
        out["runs"] = runs
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(spec["pool_size"]) as pool:
            # Warm every pool process up (imports) before the clock starts.
            warm = dict(pool.map(_warm, range(spec["pool_size"])))
            started = time.perf_counter()
            results = pool.map(_pool_job, [(base_url, j) for j in spec["jobs"]], chunksize=1)
            out["makespan_s"] = time.perf_counter() - started
            cpu = pool.map(_cpu, range(spec["pool_size"] * 4), chunksize=1)
        # Each pool process's CPU time for the jobs, reported by itself (after warm-up).
        out["pool_cpu_s"] = sum(v - warm.get(pid, 0.0) for pid, v in dict(cpu).items())
        out["runs"] = results
    out["pid"] = os.getpid()
    json.dump(out, sys.stdout)
    return 0


def _cpu(_: int) -> tuple[int, float]:
    time.sleep(0.05)  # spread the probes over every pool process
    times = os.times()
    return os.getpid(), times.user + times.system


def _warm(_: int) -> tuple[int, float]:
    import rlm
    import rlm.clients.openai  # type: ignore[import-not-found]
    import rlm.environments.local_repl  # type: ignore[import-not-found]  # noqa: F401

    time.sleep(0.2)  # so every pool process gets one warm-up task
    times = os.times()
    return os.getpid(), times.user + times.system


if __name__ == "__main__":
    sys.exit(main(sys.argv))
