"""The process backend: one runtime child process per sandbox, isolated by bubblewrap.

Every child runs in a clean environment (no orchestrator secrets) with rlimits, cgroup
memory/pids/cpu limits where the host allows (``spawn``), and bubblewrap's isolation
(``bwrap``): no network, a minimal read-only filesystem, a size-limited tmpfs scratch, an
unprivileged uid. If bubblewrap is missing or fails its self-check (``isolation``), the
backend refuses to start unless ``sandbox_allow_unsafe`` is set; then it warns and runs
plain child processes with rlimits only. The runtime's own output is kept in memory by the
backend's ``OutputReader`` and explains a crash in ``describe_exit``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import sandbox
from rlm_jobs.config import Settings, child_environment
from rlm_jobs.errors import ConfigError
from rlm_jobs.sandboxes.backends.process import bwrap, cgroups, isolation, seccomp, spawn
from rlm_jobs.sandboxes.backends.process.output import OutputReader
from rlm_jobs.sandboxes.backends.process.sandbox import ProcessSandbox
from sandbox import determinism
from sandbox.wire import Bootstrap

log = logging.getLogger(__name__)

# The directory holding the `sandbox` package, put on the child's PYTHONPATH.
SANDBOX_ROOT = str(Path(sandbox.__file__).resolve().parent.parent)
# Total CPU time of one sandbox; as long as the longest job may run.
DEFAULT_CPU_S = 3600
# One core per sandbox: a spinning cell cannot starve its neighbours.
DEFAULT_CPUS = 1.0
# bwrap's monitor and its pid-1 reaper run inside the sandbox's pids cgroup too.
BWRAP_OVERHEAD_PIDS = 2
MB = spawn.MB
RUNTIME = [*bwrap.PYTHON_FLAGS, "-m", "sandbox.runtime"]


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
        self._bwrap = bwrap_path or shutil.which("bwrap") or ""
        self._output = OutputReader()
        found = self._check_isolation()
        self._layout = found.layout
        if found.problem is not None:
            if not settings.sandbox_allow_unsafe:
                raise ConfigError(
                    f"the process sandbox cannot isolate model code: {found.problem}. Install "
                    "bubblewrap (apt-get install bubblewrap), use the docker backend, or set "
                    "RLM_JOBS_SANDBOX_ALLOW_UNSAFE=true to run model code with rlimits only"
                )
            log.warning(
                "UNSAFE SANDBOX: %s; model code will run as plain child processes with "
                "rlimits only, with the network and this host's files within reach",
                found.problem,
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

    def _check_isolation(self) -> isolation.Isolation:
        uid = self._uids.acquire() if self._as_root else None
        try:
            return isolation.check(
                bwrap_path=self._bwrap,
                python=self._settings.sandbox_python,
                sandbox_root=SANDBOX_ROOT,
                uid=uid,
            )
        finally:
            if uid is not None:
                self._uids.release(uid)

    def launch(self, bootstrap: Bootstrap) -> ProcessSandbox:
        workdir: Path | None = None
        groups: cgroups.SandboxCgroups | None = None
        uid: int | None = None
        filter_fd: int | None = None
        try:
            if self._layout is not None:
                uid = self._uids.acquire() if self._as_root else None
                filter_fd = seccomp.filter_fd()
                argv, env, cwd, bootstrap = self._isolated_command(bootstrap, uid, filter_fd)
                if self._use_cgroups:
                    groups = self._cgroups(bootstrap.sandbox_id)
            else:
                workdir = Path(tempfile.mkdtemp(prefix=f"rlm-sbx-{bootstrap.sandbox_id[:12]}-"))
                argv, env, cwd = self._plain_command(workdir)
            popen = spawn.spawn(
                argv,
                env=env,
                cwd=cwd,
                limits=spawn.rlimits(self._settings, self._cpu_s),
                groups=groups,
                filter_fd=filter_fd,
            )
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
        assert popen.stdout is not None
        proc = ProcessSandbox(
            popen,
            self._output.tail(popen.stdout),
            workdir,
            isolated=self.isolated,
            groups=groups,
            release=release,
        )
        spawn.write_bootstrap(proc, popen, bootstrap)
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
        inside = boot.replace(redis_unix_socket=socket.socket, redis_host=None, redis_port=None)
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
            **determinism.ENVIRONMENT,
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
