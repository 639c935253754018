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
    ) -> None:
        self.name = name or f"{queues.replace('.', '-').replace(',', '+')}-{uuid.uuid4().hex[:6]}"
        self.log_path = logdir / f"{self.name}.log"
        args = [
            sys.executable, "-m", "celery", "-A", "workers", "worker",
            "-Q", queues, "--pool", "threads", "-c", str(concurrency),
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


def sandbox_pids(ignore: frozenset[int] = frozenset()) -> set[int]:
    """Live sandbox runtime processes on this machine (to check nothing is left behind).

    ``ignore`` holds pids that existed before a test started, so a test judges only what
    it started itself.
    """
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if (b"sandbox.runtime" in cmdline or b"-m sandbox" in cmdline) and int(
            entry.name
        ) not in ignore:
            pids.add(int(entry.name))
    return pids
