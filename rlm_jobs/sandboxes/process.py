"""The process backend: one runtime child process per sandbox.

Each child gets its own session (so the whole group can be killed), a clean environment
(no orchestrator secrets), rlimits, and a private scratch directory removed afterwards.
The bootstrap goes to stdin, which is then closed. The runtime's own stdout/stderr go to a
log file outside the sandbox's reach; its tail explains a crash in ``describe_exit``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import sandbox
from rlm_jobs.config import Settings, child_environment
from rlm_jobs.errors import SandboxError
from sandbox.wire import Bootstrap

log = logging.getLogger(__name__)

# The directory holding the `sandbox` package, put on the child's PYTHONPATH.
SANDBOX_ROOT = str(Path(sandbox.__file__).resolve().parent.parent)
# Total CPU time of one sandbox; as long as the longest job may run.
DEFAULT_CPU_S = 3600
# Open files per sandbox: plenty for Python and Redis, not enough to exhaust the host.
MAX_OPEN_FILES = 256
# How much of the runtime's log describe_exit quotes.
LOG_TAIL_BYTES = 2000
WAIT_AFTER_KILL_S = 10.0


def rlimits(settings: Settings, cpu_s: int) -> list[tuple[int, int]]:
    mb = 1024 * 1024
    return [
        (resource.RLIMIT_AS, settings.sandbox_memory_mb * mb),
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_FSIZE, settings.sandbox_scratch_mb * mb),
        (resource.RLIMIT_NPROC, settings.sandbox_max_processes),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, MAX_OPEN_FILES),
    ]


class ProcessSandbox:
    """A started runtime process; ``kill`` reaps it and removes its directory."""

    def __init__(self, popen: subprocess.Popen[bytes], workdir: Path, log_path: Path) -> None:
        self._popen = popen
        self._workdir = workdir
        self._log_path = log_path
        self._lock = threading.Lock()
        self._killed_by_us = False
        self._log_tail = ""
        self._released = False

    @property
    def pid(self) -> int:
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen.poll() is None

    def kill(self) -> None:
        with self._lock:
            if self._released:
                return
            if self._popen.poll() is None:
                self._killed_by_us = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signal.SIGKILL)
            try:
                self._popen.wait(timeout=WAIT_AFTER_KILL_S)
            except subprocess.TimeoutExpired:
                log.error("sandbox process %d did not die after SIGKILL", self._popen.pid)
            self._log_tail = self._read_log_tail()
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._released = True

    def describe_exit(self) -> str:
        code = self._popen.poll()
        if code is None:
            return f"process {self._popen.pid} is still running"
        if code < 0:
            name = signal.Signals(-code).name
            how = f"killed by {name}"
            if self._killed_by_us:
                how += " (sent by the orchestrator)"
            elif -code == signal.SIGKILL:
                how += " (out of memory, or killed from outside)"
        else:
            how = f"exited with code {code}"
        tail = self._log_tail if self._released else self._read_log_tail()
        return f"{how}; runtime log: {tail.strip()!r}" if tail.strip() else how

    def _read_log_tail(self) -> str:
        try:
            with self._log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class ProcessBackend:
    """Runs each sandbox as a local child process with rlimits and a clean environment."""

    name = "process"

    def __init__(self, settings: Settings, *, cpu_s: int = DEFAULT_CPU_S) -> None:
        self._settings = settings
        self._cpu_s = cpu_s

    def launch(self, bootstrap: Bootstrap) -> ProcessSandbox:
        workdir = Path(tempfile.mkdtemp(prefix=f"rlm-sbx-{bootstrap.sandbox_id[:12]}-"))
        scratch = workdir / "scratch"
        scratch.mkdir()
        log_path = workdir / "runtime.log"
        env = {
            **child_environment(),
            "PYTHONPATH": SANDBOX_ROOT,
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
        }
        argv = [self._settings.sandbox_python, "-P", "-s", "-m", "sandbox.runtime"]
        limits = rlimits(self._settings, self._cpu_s)

        def limit_child() -> None:
            # Runs in the forked child: only async-signal-safe-ish calls, no imports.
            for which, value in limits:
                resource.setrlimit(which, (value, value))

        try:
            with log_path.open("wb") as log_file:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=scratch,
                    env=env,
                    start_new_session=True,
                    preexec_fn=limit_child,
                    close_fds=True,
                )
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise SandboxError(f"could not start the sandbox process: {exc}") from exc
        proc = ProcessSandbox(popen, workdir, log_path)
        _write_bootstrap(proc, popen, bootstrap)
        return proc


def _write_bootstrap(proc: ProcessSandbox, popen: subprocess.Popen[bytes], boot: Bootstrap) -> None:
    assert popen.stdin is not None
    try:
        popen.stdin.write(boot.model_dump_json().encode() + b"\n")
        popen.stdin.close()
    except OSError as exc:
        proc.kill()
        raise SandboxError(
            f"the sandbox process died before reading its bootstrap: {proc.describe_exit()}"
        ) from exc
