"""Whether bubblewrap can isolate the runtime on this host: the real command, run once.

The check starts the sandbox command with a probe instead of the runtime and looks at what
it reports (its uid, its network interfaces). A backend runs it when it is made.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from rlm_jobs.config import child_environment
from rlm_jobs.sandboxes.backends.process import bwrap, seccomp

# A scratch tmpfs for the probe: it writes nothing.
PROBE_SCRATCH_BYTES = 1024 * 1024
_PROBE = "import os, socket, sandbox.runtime; print(os.getuid(), socket.if_nameindex())"


@dataclass(frozen=True)
class Isolation:
    """What the check found: the interpreter layout to bind, or the reason it cannot work."""

    layout: bwrap.PythonLayout | None
    problem: str | None


def check(*, bwrap_path: str, python: str, sandbox_root: str, uid: int | None) -> Isolation:
    """Run the sandbox command once with a probe; ``uid`` as for ``bwrap.command``."""
    if not bwrap_path or not os.access(bwrap_path, os.X_OK):
        return Isolation(None, f"bubblewrap not found (looked for {bwrap_path or 'bwrap'})")
    if uid is not None and not os.access("/usr/bin/setpriv", os.X_OK):
        return Isolation(None, "setpriv (util-linux) is needed to drop root inside the sandbox")
    return _probe(bwrap_path, python, sandbox_root, uid)


def _probe(bwrap_path: str, python: str, sandbox_root: str, uid: int | None) -> Isolation:
    try:
        layout = bwrap.discover_layout(python, sandbox_root)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return Isolation(None, f"cannot inspect {python}: {exc}")
    filter_fd = seccomp.filter_fd()
    try:
        argv = bwrap.command(
            layout,
            bwrap=bwrap_path,
            sandbox_root=sandbox_root,
            scratch_bytes=PROBE_SCRATCH_BYTES,
            redis_socket=None,
            uid=uid,
            seccomp_fd=filter_fd,
            program=[*bwrap.PYTHON_FLAGS, "-c", _PROBE],
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
        return Isolation(None, f"bubblewrap self-check failed: {exc}")
    finally:
        if filter_fd is not None:
            os.close(filter_fd)
    if out.returncode != 0:
        return Isolation(None, f"bubblewrap self-check failed: {out.stderr.strip()[-500:]}")
    found_uid, _, interfaces = out.stdout.strip().partition(" ")
    if found_uid == "0" or interfaces != "[(1, 'lo')]":
        return Isolation(
            None, f"bubblewrap self-check: sandbox has uid {found_uid}, interfaces {interfaces}"
        )
    return Isolation(layout, None)
