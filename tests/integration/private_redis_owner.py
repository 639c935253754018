"""Owners of a library-mode private redis-server that end in the ways real processes do.

Run by tests/integration/test_private_redis.py as ``python -m tests.integration.private_redis_owner
MODE [PROVIDER_URL]``; each mode prints one JSON line naming the redis-server directories it
started, then ends as its name says:

- ``sleep``: waits to be killed (the test sends SIGKILL).
- ``fork-then-sleep``: forks a child that keeps running, then waits to be killed: the
  child's inherited copy of the server must not keep the server alive. A first child
  calls ``stop()`` on its copy and exits; the report says whether the server still
  answered afterwards.
- ``os-exit``: leaves through ``os._exit``, without exit handlers.
- ``process-pool PROVIDER_URL``: runs 8 RLM jobs on a ``ProcessPoolExecutor`` of 2 workers
  (each worker starts its own private server) and exits normally; the workers end as
  ``multiprocessing`` workers do, without exit handlers.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import redis

from rlm_jobs.api import RLM, _PrivateRedis
from rlm_jobs.config import Settings

JOBS = 8
WORKERS = 2


def _report(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _sleep_forever() -> None:
    while True:
        time.sleep(60)


def _needle_job(args: tuple[str, int]) -> dict[str, object]:
    """One library-mode job in a pool worker, on that worker's private redis-server."""
    provider_url, n = args
    code = f"PP-{n}"
    context = "filler line\n" * 2000 + f"The secret code is {code}.\n" + "filler line\n" * 2000
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "needle"},
        settings=Settings(scripted_base_url=provider_url),
    )
    try:
        result = rlm.completion(context, root_prompt="What is the secret code?")
    finally:
        rlm.close()
    server = _PrivateRedis.get()
    return {
        "expected": code,
        "answer": result.response,
        "workdir": str(server.workdir),
        "pid": os.getpid(),
    }


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "process-pool":
        with ProcessPoolExecutor(WORKERS) as pool:
            rows = list(pool.map(_needle_job, [(argv[1], n) for n in range(JOBS)]))
        _report(rows=rows, workdirs=sorted({str(r["workdir"]) for r in rows}))
        return 0
    server = _PrivateRedis.get()
    if mode == "fork-then-sleep":
        stopper = os.fork()
        if stopper == 0:
            server.stop()
            os._exit(0)
        os.waitpid(stopper, 0)
        answers = redis.Redis.from_url(server.url, socket_timeout=5).ping()
        child = os.fork()
        if child == 0:
            _sleep_forever()
        _report(workdirs=[str(server.workdir)], child=child, answers_after_child_stop=answers)
        _sleep_forever()
    _report(workdirs=[str(server.workdir)])
    if mode == "os-exit":
        os._exit(0)
    _sleep_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
