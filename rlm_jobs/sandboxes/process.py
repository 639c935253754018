"""The process backend: one runtime child process per sandbox, isolated by bubblewrap.

Every child gets its own session (so the whole group can be killed), a clean environment
(no orchestrator secrets), rlimits, cgroup memory/pids/cpu limits where the host allows, and
the bootstrap on stdin, which is then closed. Isolation (``rlm_jobs.sandboxes.bwrap``): no
network, a minimal read-only filesystem, a size-limited tmpfs scratch, an unprivileged uid.
If bubblewrap is missing or fails its self-check, the backend refuses to start unless
``sandbox_allow_unsafe`` is set; then it warns and runs plain child processes with rlimits
only. The runtime's own stdout/stderr go to a pipe whose last
few KB are kept in memory (never on disk, which model code could fill); that tail explains a
crash in ``describe_exit``. One thread reads the pipes of all of a process's sandboxes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

import sandbox
from rlm_jobs.config import Settings, child_environment
from rlm_jobs.errors import ConfigError, SandboxError
from rlm_jobs.sandboxes import bwrap, cgroups, seccomp
from sandbox.wire import Bootstrap

log = logging.getLogger(__name__)

# The directory holding the `sandbox` package, put on the child's PYTHONPATH.
SANDBOX_ROOT = str(Path(sandbox.__file__).resolve().parent.parent)
# Total CPU time of one sandbox; as long as the longest job may run.
DEFAULT_CPU_S = 3600
# One core per sandbox: a spinning cell cannot starve its neighbours.
DEFAULT_CPUS = 1.0
# Open files per sandbox: plenty for Python and Redis, not enough to exhaust the host.
MAX_OPEN_FILES = 256
# bwrap's monitor and its pid-1 reaper run inside the sandbox's pids cgroup too.
BWRAP_OVERHEAD_PIDS = 2
# How much of the runtime's log describe_exit quotes.
LOG_TAIL_BYTES = 2000
WAIT_AFTER_KILL_S = 10.0
MB = 1024 * 1024
RUNTIME = [*bwrap.PYTHON_FLAGS, "-m", "sandbox.runtime"]

_checked: dict[tuple[str, str, bool], bwrap.PythonLayout] = {}
_checked_lock = threading.Lock()


def rlimits(settings: Settings, cpu_s: int) -> list[tuple[int, int]]:
    return [
        (resource.RLIMIT_AS, settings.sandbox_memory_mb * MB),
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_FSIZE, settings.sandbox_scratch_mb * MB),
        (resource.RLIMIT_NPROC, settings.sandbox_max_processes),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, MAX_OPEN_FILES),
    ]


class _OutputTail:
    """The end of one child's stdout/stderr pipe, drained by the process's ``_OutputReader``."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe
        self._tail = b""
        self._ended = threading.Event()
        _reader.add(self)

    def fileno(self) -> int:
        return self._pipe.fileno()

    def take(self, chunk: bytes) -> None:
        self._tail = (self._tail + chunk)[-LOG_TAIL_BYTES:]

    def end(self) -> None:
        self._pipe.close()
        self._ended.set()

    def text(self, wait_s: float = 0.0) -> str:
        """The tail; ``wait_s`` lets a just-dead process's last words arrive."""
        self._ended.wait(wait_s)
        return self._tail.decode("utf-8", "replace")


class _OutputReader:
    """One thread reading the output pipes of every sandbox of this process.

    A thread per sandbox would mostly sit blocked in ``read``; 200 sandboxes would mean 200
    threads. A pipe is dropped (and closed) at end of file, when its process and everything
    it started have exited.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._selector: selectors.BaseSelector | None = None
        self._wake_w = -1
        self._pid = 0

    def add(self, tail: _OutputTail) -> None:
        os.set_blocking(tail.fileno(), False)
        with self._lock:
            if self._selector is None or self._pid != os.getpid():
                self._start()  # first use, or a forked child: the thread did not come along
            assert self._selector is not None
            self._selector.register(tail.fileno(), selectors.EVENT_READ, tail)
            # Selectors other than epoll only see a new pipe on their next call; a full
            # wake-up pipe means a wake-up is pending anyway.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\0")

    def _start(self) -> None:
        """Called with the lock held."""
        wake_r, self._wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(wake_r, selectors.EVENT_READ, None)
        self._pid = os.getpid()
        thread = threading.Thread(
            target=self._run, args=(self._selector,), name="rlm-sandbox-output", daemon=True
        )
        thread.start()

    def _run(self, selector: selectors.BaseSelector) -> None:
        while True:
            for key, _ in selector.select():
                try:
                    self._serve(selector, key)
                except Exception:  # this thread must live on for the other sandboxes' pipes
                    log.exception("reading sandbox output (fd %d)", key.fd)

    def _serve(self, selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        tail: _OutputTail | None = key.data
        chunk = _read_available(key.fd)
        if tail is None:
            return  # the wake-up pipe: the registration has taken effect
        if chunk:
            tail.take(chunk)
        elif chunk is not None:  # end of file
            with self._lock:
                selector.unregister(key.fd)
            tail.end()


def _read_available(fd: int) -> bytes | None:
    """What the pipe holds (b"" at end of file), or None if nothing after all."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:  # the pipe broke: treat it as ended
        return b""


_reader = _OutputReader()


class ProcessSandbox:
    """A started runtime process; ``kill`` reaps it and releases everything it held."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        workdir: Path | None,
        *,
        isolated: bool,
        groups: cgroups.SandboxCgroups | None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self._popen = popen
        self._workdir = workdir
        assert popen.stdout is not None
        self._output = _OutputTail(popen.stdout)
        self._isolated = isolated
        self._groups = groups
        self._release = release
        self._lock = threading.Lock()
        self._killed_by_us = False
        self._oom_kills = 0
        self._pids_refused = 0
        self._log_tail = ""
        self._released = False

    @property
    def pid(self) -> int:
        """The pid of the process we started (bwrap's monitor when isolated)."""
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
            if self._groups is not None:
                # Catches anything that left the process group (setsid) before it could run on.
                self._oom_kills = self._groups.oom_kills()
                self._pids_refused = self._groups.pids_refused()
                self._groups.destroy()
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


class ProcessBackend:
    """Runs each sandbox as a local child process; see the module docstring."""

    name = "process"

    def __init__(
        self,
        settings: Settings,
        *,
        cpu_s: int = DEFAULT_CPU_S,
        cpus: float = DEFAULT_CPUS,
        bwrap_path: str | None = None,
        uids: bwrap.UidPool | None = None,
    ) -> None:
        self._settings = settings
        self._cpu_s = cpu_s
        self._cpus = cpus
        self._as_root = os.geteuid() == 0
        self._uids = uids or bwrap.UidPool()
        self._layout: bwrap.PythonLayout | None = None
        self._seccomp = seccomp.build()
        self._bwrap = bwrap_path or shutil.which("bwrap") or ""
        problem = self._check_isolation()
        if problem is not None:
            if not settings.sandbox_allow_unsafe:
                raise ConfigError(
                    f"the process sandbox cannot isolate model code: {problem}. Install "
                    "bubblewrap (apt-get install bubblewrap), use the docker backend, or set "
                    "RLM_JOBS_SANDBOX_ALLOW_UNSAFE=true to run model code with rlimits only"
                )
            log.warning(
                "UNSAFE SANDBOX: %s; model code will run as plain child processes with "
                "rlimits only, with the network and this host's files within reach",
                problem,
            )
        self._use_cgroups = self._layout is not None and cgroups.available()
        if self._use_cgroups:
            cgroups.remove_stale()
        if self._layout is not None and not self._use_cgroups:
            log.warning(
                "cgroup v1 memory/pids/cpu controllers are not writable here; sandboxes get "
                "rlimits and a size-limited tmpfs but no cgroup limits"
            )

    @property
    def isolated(self) -> bool:
        return self._layout is not None

    def _check_isolation(self) -> str | None:
        """Run the real sandbox command once; None if it works, else what is wrong."""
        if not self._bwrap or not os.access(self._bwrap, os.X_OK):
            return f"bubblewrap not found (looked for {self._bwrap or 'bwrap on PATH'})"
        if self._as_root and not os.access("/usr/bin/setpriv", os.X_OK):
            return "setpriv (util-linux) is needed to drop root inside the sandbox"
        key = (self._bwrap, self._settings.sandbox_python, self._as_root)
        with _checked_lock:
            if key in _checked:
                self._layout = _checked[key]
                return None
        try:
            layout = bwrap.discover_layout(self._settings.sandbox_python, SANDBOX_ROOT)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            return f"cannot inspect {self._settings.sandbox_python}: {exc}"
        probe = "import os, socket, sandbox.runtime; print(os.getuid(), socket.if_nameindex())"
        uid = self._uids.acquire() if self._as_root else None
        filter_fd = self._seccomp_fd()
        try:
            argv = bwrap.command(
                layout,
                bwrap=self._bwrap,
                sandbox_root=SANDBOX_ROOT,
                scratch_bytes=MB,
                redis_socket=None,
                uid=uid,
                seccomp_fd=filter_fd,
                program=[*bwrap.PYTHON_FLAGS, "-c", probe],
            )
            out = subprocess.run(
                argv,
                env=child_environment(),
                capture_output=True,
                text=True,
                timeout=bwrap.PROBE_TIMEOUT_S,
                check=False,
                pass_fds=() if filter_fd is None else (filter_fd,),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap self-check failed: {exc}"
        finally:
            if uid is not None:
                self._uids.release(uid)
            if filter_fd is not None:
                os.close(filter_fd)
        if out.returncode != 0:
            return f"bubblewrap self-check failed: {out.stderr.strip()[-500:]}"
        found_uid, _, interfaces = out.stdout.strip().partition(" ")
        if found_uid == "0" or interfaces != "[(1, 'lo')]":
            return f"bubblewrap self-check: sandbox has uid {found_uid}, interfaces {interfaces}"
        with _checked_lock:
            _checked[key] = layout
        self._layout = layout
        return None

    def _seccomp_fd(self) -> int | None:
        """A fresh descriptor holding the filter; bwrap reads it to the end, so one per use."""
        if self._seccomp is None:
            return None
        fd = os.memfd_create("rlm-seccomp", os.MFD_CLOEXEC)
        os.write(fd, self._seccomp)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def launch(self, bootstrap: Bootstrap) -> ProcessSandbox:
        workdir: Path | None = None
        groups: cgroups.SandboxCgroups | None = None
        uid: int | None = None
        filter_fd: int | None = None
        try:
            if self._layout is not None:
                uid = self._uids.acquire() if self._as_root else None
                filter_fd = self._seccomp_fd()
                argv, env, cwd, bootstrap = self._isolated_command(bootstrap, uid, filter_fd)
                if self._use_cgroups:
                    groups = self._cgroups(bootstrap.sandbox_id)
            else:
                workdir = Path(tempfile.mkdtemp(prefix=f"rlm-sbx-{bootstrap.sandbox_id[:12]}-"))
                argv, env, cwd = self._plain_command(workdir)
            popen = self._spawn(argv, env, cwd, groups, filter_fd)
        except BaseException:
            if groups is not None:
                groups.destroy()
            if uid is not None:
                self._uids.release(uid)
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        finally:
            if filter_fd is not None:
                os.close(filter_fd)
        release = None if uid is None else lambda: self._uids.release(uid)
        proc = ProcessSandbox(
            popen, workdir, isolated=self.isolated, groups=groups, release=release
        )
        _write_bootstrap(proc, popen, bootstrap)
        return proc

    def _isolated_command(
        self, boot: Bootstrap, uid: int | None, filter_fd: int | None
    ) -> tuple[list[str], dict[str, str], str, Bootstrap]:
        assert self._layout is not None
        if not boot.redis_unix_socket:
            raise ConfigError(
                "the isolated process sandbox has no network and needs Redis's Unix socket: "
                "set RLM_JOBS_SANDBOX_REDIS_SOCKET (or connect the orchestrator by socket)"
            )
        socket = bwrap.socket_mount(boot.redis_unix_socket)
        argv = bwrap.command(
            self._layout,
            bwrap=self._bwrap,
            sandbox_root=SANDBOX_ROOT,
            scratch_bytes=self._settings.sandbox_scratch_mb * MB,
            redis_socket=socket,
            uid=uid,
            seccomp_fd=filter_fd,
            program=RUNTIME,
        )
        inside = dataclasses.replace(
            boot, redis_unix_socket=socket.socket, redis_host=None, redis_port=None
        )
        return argv, child_environment(), "/", inside

    def _plain_command(self, workdir: Path) -> tuple[list[str], dict[str, str], str]:
        scratch = workdir / "scratch"
        scratch.mkdir()
        env = {
            **child_environment(),
            "PYTHONPATH": SANDBOX_ROOT,
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
        }
        return [self._settings.sandbox_python, *RUNTIME], env, str(scratch)

    def _cgroups(self, sandbox_id: str) -> cgroups.SandboxCgroups | None:
        s = self._settings
        try:
            return cgroups.SandboxCgroups.create(
                f"rlm-sbx-{sandbox_id}",
                # tmpfs pages are charged to the cgroup, so the scratch space counts too.
                memory_bytes=(s.sandbox_memory_mb + s.sandbox_scratch_mb) * MB,
                max_pids=s.sandbox_max_processes + BWRAP_OVERHEAD_PIDS,
                cpus=self._cpus,
            )
        except OSError as exc:
            log.warning("could not create cgroups for sandbox %s: %s", sandbox_id, exc)
            return None

    def _spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        groups: cgroups.SandboxCgroups | None,
        filter_fd: int | None,
    ) -> subprocess.Popen[bytes]:
        limits = rlimits(self._settings, self._cpu_s)
        join_fds = groups.open_join_fds() if groups is not None else []

        def enter_limits() -> None:
            # Runs in the forked child before exec: plain syscalls only, nothing that locks.
            for fd in join_fds:
                os.write(fd, b"0")
            for which, value in limits:
                resource.setrlimit(which, (value, value))

        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=enter_limits,
                close_fds=True,
                pass_fds=() if filter_fd is None else (filter_fd,),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"could not start the sandbox process: {exc}") from exc
        finally:
            for fd in join_fds:
                os.close(fd)


def _write_bootstrap(proc: ProcessSandbox, popen: subprocess.Popen[bytes], boot: Bootstrap) -> None:
    assert popen.stdin is not None
    try:
        popen.stdin.write(boot.to_json().encode() + b"\n")
        popen.stdin.close()
    except OSError as exc:
        proc.kill()
        raise SandboxError(
            f"the sandbox process died before reading its bootstrap: {proc.describe_exit()}"
        ) from exc
