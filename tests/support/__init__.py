"""What tests share, imported by them (no test module imports another).

Here: real Celery workers (`celery -A workers worker` subprocesses, as users run them), a
whole cluster for one test, waits on conditions, the sandbox tests' stand-ins and Docker
check, the CLI. Beside it: `documents` (files and schemas to ingest), `faults` (a Redis to
crash and restart), `completers` (scripted completers for the loop's seams), `tools` (the
tools tests register, `RLM_JOBS_TOOLS=tests.support.tools`, and what they are asked about).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from rlm_jobs.config import Settings, redis_client
from rlm_jobs.errors import ConfigError
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.session import SandboxSession
from rlm_jobs.submitter import Submitter
from rlm_jobs.testing.provider import ScriptedProvider
from sandbox.records import SubcallResult
from sandbox.wire import SubcallRequest
from workers.app import create_app
from workers.enqueue import celery_enqueuer

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]


def wait_for(
    condition: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = 0.05
) -> T:
    """Poll until ``condition()`` is truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


class Worker:
    """One worker process; its log is kept so tests can read what it did."""

    def __init__(
        self,
        queues: str,
        env: Mapping[str, str],
        logdir: Path,
        *,
        concurrency: int = 8,
        name: str | None = None,
        app: str = "workers",
        pool: str | None = "threads",
    ) -> None:
        """``pool`` None leaves the pool to the app's configuration (no ``--pool``)."""
        self.name = name or f"{queues.replace('.', '-').replace(',', '+')}-{uuid.uuid4().hex[:6]}"
        self.log_path = logdir / f"{self.name}.log"
        args = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "-Q", queues, *(("--pool", pool) if pool else ()), "-c", str(concurrency),
            "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-l", "info",
        ]  # fmt: skip
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited:\n{self.log()[-3000:]}")
            return " ready." in self.log()

        wait_for(ready, timeout_s, f"worker {self.name} to be ready")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker's whole process group, as a crashed host would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def _parent(pid: int) -> int:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def pids_mentioning(text: str) -> set[int]:
    """Live processes whose command line contains ``text`` (a server's directory, say)."""
    wanted = text.encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and wanted in _cmdline(int(entry.name)):
            state = _state(int(entry.name))
            if state not in ("Z", "X", ""):  # a zombie has ended; only its parent's wait is due
                found.add(int(entry.name))
    return found


def _state(pid: int) -> str:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def sandbox_pids(marker: str) -> set[int]:
    """Live sandbox processes of one Redis server (to check nothing is left behind).

    ``marker`` is that server's directory: bubblewrap's command line names the socket it
    mounts, so sandboxes of other Redis servers on the machine are not counted. The runtime
    inside has a plain command line; it is found through its bubblewrap parents.
    """
    wanted = marker.encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        cmdline = _cmdline(pid)
        if b"sandbox.runtime" not in cmdline and b"-m sandbox" not in cmdline:
            continue
        lineage, ancestor = [cmdline], pid
        for _ in range(3):
            ancestor = _parent(ancestor)
            lineage.append(_cmdline(ancestor))
        if any(wanted in line for line in lineage):
            pids.add(pid)
    return pids


def wait_sandboxes_gone(marker: str, timeout_s: float = 30.0) -> None:
    """Wait until no sandbox of ``marker``'s Redis server is left; on a timeout, fail
    naming each one left, its state, age and parents (so a flaky leak can be read)."""
    try:
        wait_for(lambda: not sandbox_pids(marker), timeout_s, "sandbox processes to exit")
    except AssertionError as exc:
        left = "\n".join(_describe(pid) for pid in sorted(sandbox_pids(marker)))
        raise AssertionError(f"{exc}; left:\n{left or '(none by now)'}") from None


def _describe(pid: int) -> str:
    lines, ancestor = [], pid
    for _ in range(4):
        if ancestor <= 1:
            break
        try:
            started = int(
                (Path("/proc") / str(ancestor) / "stat").read_text().rsplit(")", 1)[1].split()[19]
            )
            age_s = time.clock_gettime(time.CLOCK_BOOTTIME) - started / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            age_s = float("nan")
        cmdline = _cmdline(ancestor).decode(errors="replace")[:160]
        lines.append(f"  pid {ancestor} [{_state(ancestor)}] {age_s:.1f}s old: {cmdline}")
        ancestor = _parent(ancestor)
    return "\n".join(lines)


def runtime_pids(marker: str) -> set[int]:
    """The sandbox runtimes themselves (one per sandbox), without their bubblewrap parents."""
    return {pid for pid in sandbox_pids(marker) if b"bwrap" not in _cmdline(pid)}


NEEDLE_CHUNK = 50_000  # the scripted needle policy's chunk size


def needle_context(n_chunks: int, code: str, at_chunk: int) -> str:
    filler = ("lorem ipsum dolor sit amet. " * (NEEDLE_CHUNK // 28 + 1))[: NEEDLE_CHUNK - 40]
    parts = [filler + "\n" for _ in range(n_chunks)]
    parts[at_chunk] = filler[: NEEDLE_CHUNK // 2] + f"\nThe secret code is {code}.\n"
    return "".join(parts)


class Cluster:
    """Workers started on demand for one test, all stopped at its end."""

    def __init__(self, server: RedisServer, provider: ScriptedProvider, logdir: Path) -> None:
        self.server = server
        self.provider = provider
        self.logdir = logdir
        self.workers: list[Worker] = []
        self.marker = str(server.workdir)
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "RLM_JOBS_REDIS_URL": server.url,
            "RLM_JOBS_SANDBOX_REDIS_SOCKET": server.unix_socket,
            "RLM_JOBS_SCRIPTED_BASE_URL": provider.url,
            "RLM_JOBS_LEASE_TTL_S": "3",
            "RLM_JOBS_LEASE_RENEW_S": "0.5",
            "RLM_JOBS_REAPER_INTERVAL_S": "0.5",
        }
        self.settings = Settings(redis_url=server.url, scripted_base_url=provider.url)
        # Retries like the workers' clients: some tests crash and restart Redis.
        self.client = redis_client(self.settings)
        self.app = create_app(self.settings)
        self.submitter = Submitter(
            self.client, celery_enqueuer(self.settings, self.app), self.settings
        )

    def start(self, queues: str, concurrency: int = 8, **env: str) -> Worker:
        worker = Worker(queues, {**self.env, **env}, self.logdir, concurrency=concurrency)
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def log_count(self, text: str) -> int:
        """How many times ``text`` appears in the logs of this cluster's workers."""
        return sum(w.log().count(text) for w in self.workers)

    def describe(self, job_id: str, max_chars: int = 6000) -> str:
        """A failed assertion's evidence about one job: its record, its children, what its
        trajectory says went wrong, and the worker log lines that name it."""
        store = self.submitter.store
        record = store.get(job_id)
        lines = [f"job {job_id}: {record.status.value}, attempts {record.attempts}"]
        if record.result is not None:
            lines.append(f"  answer {record.result.answer!r}, reason {record.result.reason!r}")
        for child in store.children(job_id):
            child_record = store.get(child)
            lines.append(f"  child {child}: {child_record.status.value}")
        for entry in store.trajectory(job_id):
            if entry.get("type") == "iteration":
                results = [block.get("result", {}) for block in entry.get("code_blocks", [])]
                brief = {
                    "iteration": entry.get("iteration"),
                    "reply": str(entry.get("response", ""))[:150],
                    "cells": [
                        (str(r.get("stdout", ""))[-200:], str(r.get("stderr", ""))[-200:])
                        for r in results
                    ],
                    "sub_call_errors": [
                        str(call.get("response", ""))[:150]
                        for r in results
                        for call in r.get("rlm_calls", [])
                        if str(call.get("response", "")).startswith("Error")
                    ],
                }
                lines.append("  " + json.dumps(brief, default=str))
            elif entry.get("error") or entry.get("resumed"):
                lines.append("  " + json.dumps(entry, default=str)[:400])
        for worker in self.workers:
            named = [line for line in worker.log().splitlines() if job_id in line]
            lines += [f"  [{worker.name}] {line[:300]}" for line in named[-40:]]
        return "\n".join(lines)[-max_chars:]

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.client.close()


# ---- sandbox tests ------------------------------------------------------------------

_DOCKER_HINT = (
    "start Docker with `sudo ops/start-dockerd.sh` and build the image with "
    "`ops/build-images.sh sandbox`, or set RLM_JOBS_TEST_DOCKER=0 to skip these tests"
)


def connect_docker_or_fail() -> Any:
    """A client of a running engine that has the sandbox image; fails the test otherwise.

    Docker tests never skip quietly: a missing engine or image is a failure with a hint.
    """
    from rlm_jobs.sandboxes.backends import docker as docker_backend

    settings = Settings()
    try:
        client = docker_backend.connect(settings)
    except ConfigError as exc:
        pytest.fail(f"Docker tests cannot run: {exc}. {_DOCKER_HINT}", pytrace=False)
    try:
        client.images.get(settings.docker_image)
    except Exception as exc:
        client.close()
        pytest.fail(
            f"Docker tests cannot run: image {settings.docker_image!r}: {exc}. {_DOCKER_HINT}",
            pytrace=False,
        )
    return client


def answer_from_text(request: SubcallRequest) -> list[SubcallResult]:
    """A stand-in for the LLM dispatcher: answers follow from the prompt text.

    ``fail...`` fails its slot; ``sleep:<s>:...`` answers after ``s`` seconds, so
    parallel batches and out-of-order completion can be observed.
    """
    outcomes = []
    for prompt in request.prompts:
        if prompt.startswith("sleep:"):
            _, seconds, _ = prompt.split(":", 2)
            time.sleep(float(seconds))
        if prompt.startswith("fail"):
            outcomes.append(SubcallResult(ok=False, text=f"Error: refused {prompt!r}"))
        else:
            text = f"{request.kind}/{request.model or 'default'}: {prompt.upper()}"
            outcomes.append(SubcallResult(ok=True, text=text))
    return outcomes


def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """True once ``predicate()`` holds, False if it still does not after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


MakeServices = Callable[[Settings], SandboxServices]
OpenSession = Callable[..., SandboxSession]


# ---- the CLI against a cluster ------------------------------------------------------

# The installed console script when there is one: that is what users type.
_SCRIPT = Path(sys.executable).with_name("rlm-jobs")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "rlm_jobs.cli"]


@dataclass
class Stack:
    server: RedisServer
    provider: ScriptedProvider
    workers: list[Worker]

    @property
    def env(self) -> dict[str, str]:
        """The CLI's environment: a broker, and nothing else from this process."""
        return {"PATH": os.environ.get("PATH", ""), "RLM_JOBS_REDIS_URL": self.server.url}


def workers_answer_ping(settings: Settings, names: list[str]) -> bool:
    """Every named worker answers a control ping."""
    replies = create_app(settings).control.ping(timeout=0.5)
    answered = {name for reply in replies for name in reply}
    return all(any(a.startswith(f"{n}@") for a in answered) for n in names)


def cli(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout_s,
        check=False,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
