"""Real Celery workers for tests: `celery -A workers worker` subprocesses, as users run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]


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


def runtime_pids(marker: str) -> set[int]:
    """The sandbox runtimes themselves (one per sandbox), without their bubblewrap parents."""
    return {pid for pid in sandbox_pids(marker) if b"bwrap" not in _cmdline(pid)}
