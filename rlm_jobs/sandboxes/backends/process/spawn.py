"""Forking one runtime child into its limits, then handing it its bootstrap on stdin.

The child gets its own session (so the whole group can be killed), the environment it is
given and nothing else, rlimits, and joins its cgroups before it executes anything (it
writes ``0``, "me", into descriptors opened here), so no process of the sandbox ever runs
outside the limits.
"""

from __future__ import annotations

import os
import resource
import subprocess

from rlm_jobs.config import Settings
from rlm_jobs.errors import SandboxError
from rlm_jobs.sandboxes.backends.process import cgroups
from rlm_jobs.sandboxes.backends.process.sandbox import ProcessSandbox
from sandbox.wire import Bootstrap

# Open files per sandbox: plenty for Python and Redis, not enough to exhaust the host.
MAX_OPEN_FILES = 256
MB = 1024 * 1024


def rlimits(settings: Settings, cpu_s: int) -> list[tuple[int, int]]:
    return [
        (resource.RLIMIT_AS, settings.sandbox_memory_mb * MB),
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_FSIZE, settings.sandbox_scratch_mb * MB),
        (resource.RLIMIT_NPROC, settings.sandbox_max_processes),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, MAX_OPEN_FILES),
    ]


def spawn(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str,
    limits: list[tuple[int, int]],
    groups: cgroups.SandboxCgroups | None,
    filter_fd: int | None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside its limits; stdin and the merged stdout/stderr are pipes."""
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


def write_bootstrap(proc: ProcessSandbox, popen: subprocess.Popen[bytes], boot: Bootstrap) -> None:
    """One JSON line on stdin (never argv or the environment). Stdin then stays open as the
    runtime's lifeline (``Bootstrap.stdin_lifeline``): only this process holds its write end
    (close-on-exec), so it closes when we end, however we end, and the runtime exits."""
    assert popen.stdin is not None
    try:
        popen.stdin.write(boot.replace(stdin_lifeline=True).to_json().encode() + b"\n")
        popen.stdin.flush()
    except OSError as exc:
        proc.kill()
        raise SandboxError(
            f"the sandbox process died before reading its bootstrap: {proc.describe_exit()}"
        ) from exc
