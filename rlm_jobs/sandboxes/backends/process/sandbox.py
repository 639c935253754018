"""One started runtime process: liveness, kill (which releases everything), how it ended."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from rlm_jobs.sandboxes.backends.process import cgroups
from rlm_jobs.sandboxes.backends.process.output import OutputTail

log = logging.getLogger(__name__)

WAIT_AFTER_KILL_S = 10.0

# The host's write ends of this process's sandbox lifelines (descriptor -> the pipe's device
# and inode), for the fork handler. Plain numbers: the handler runs in the forked child,
# where it must not raise, print, lock, or read objects another thread was changing.
_lifelines: dict[int, tuple[int, int]] = {}


def _identity(fd: int) -> tuple[int, int]:
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino


def _drop_lifelines_in_child() -> None:
    """After fork, in the child: a copy of a sandbox's lifeline would keep the sandbox alive
    after this process died, as long as the child lives (close-on-exec covers only exec).
    Each copy is pointed at /dev/null, the descriptor number staying the file object's own.

    It also runs in every child ``subprocess`` forks with a ``preexec_fn`` (our own sandbox
    launches), before that child's pipes are in place: a number whose pipe closed meanwhile
    may already name one of them, so only a descriptor that is still the same pipe is
    touched. Nothing may escape: a handler that raises is reported on stderr, which takes
    the stream's lock (in a Celery worker, through its logger) that another thread may
    have held at the fork, and the child would hang before its exec, with the launching
    thread waiting on it."""
    try:
        held = list(_lifelines.items())
        if not held:
            return
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd, pipe in held:
                with contextlib.suppress(OSError):
                    if _identity(fd) == pipe:
                        os.dup2(null, fd)
        finally:
            os.close(null)
    except BaseException:  # see above: never report from here
        return


os.register_at_fork(after_in_child=_drop_lifelines_in_child)


class ProcessSandbox:
    """A started runtime process; ``kill`` reaps it and releases everything it held."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        output: OutputTail,
        workdir: Path | None,
        *,
        isolated: bool,
        groups: cgroups.SandboxCgroups | None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self._popen = popen
        self._output = output
        self._workdir = workdir
        self._isolated = isolated
        self._groups = groups
        self._release = release
        self._lock = threading.Lock()
        self._killed_by_us = False
        self._oom_kills = 0
        self._log_tail = ""
        self._released = False
        self._lifeline: tuple[int, tuple[int, int]] | None = None
        if popen.stdin is not None:
            fd = popen.stdin.fileno()
            self._lifeline = fd, _identity(fd)
            _lifelines[fd] = self._lifeline[1]

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
            if self._groups is not None:
                # Catches anything that left the process group (setsid) before it could run on.
                self._oom_kills = self._groups.oom_kills()
                self._groups.destroy()
            if self._lifeline is not None:  # nobody waits on it any more
                # Forgotten before it closes (its number may be reused from then on), and
                # only if the entry is still ours: a newer sandbox may hold that number now.
                fd, pipe = self._lifeline
                if _lifelines.get(fd) == pipe:
                    del _lifelines[fd]
                with contextlib.suppress(OSError):
                    self._popen.stdin.close()  # type: ignore[union-attr]
            self._log_tail = self._output.text(wait_s=1.0)
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            if self._release is not None:
                self._release()
            self._released = True

    def describe_exit(self) -> str:
        code = self._popen.poll()
        if code is None:
            return f"process {self._popen.pid} is still running"
        # bwrap reports a child killed by signal N as exit status 128 + N.
        signum = -code if code < 0 else code - 128 if self._isolated and code > 128 else 0
        oom = self._oom_kills if self._released else self._current_oom_kills()
        if signum and signum in signal.valid_signals():
            how = f"killed by {signal.Signals(signum).name}"
            if oom:
                how += " (the sandbox ran out of memory: its cgroup memory limit was hit)"
            elif self._killed_by_us:
                how += " (sent by the orchestrator)"
            elif signum == signal.SIGKILL:
                how += " (out of memory, or killed from outside)"
            elif signum == signal.SIGXCPU:
                how += " (its CPU-time limit ran out)"
        else:
            how = f"exited with code {code}"
        tail = (self._log_tail if self._released else self._output.text(wait_s=0.5)).strip()
        return f"{how}; runtime log: {tail!r}" if tail else how

    def _current_oom_kills(self) -> int:
        return self._groups.oom_kills() if self._groups is not None else 0
