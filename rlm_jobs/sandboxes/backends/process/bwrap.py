"""Bubblewrap command lines for the process backend, and the check that they work here.

The sandbox sees a read-only ``/usr`` (plus the ``/bin``, ``/lib*`` links), the Python
installation at ``/opt/python``, any directory outside it the runtime imports from at
``/opt/site-packages/<n>`` (none today: the runtime is stdlib only), the ``sandbox``
package at ``/opt/rlm/sandbox``, the Redis Unix socket under ``/run/rlm`` (``socket_mount``),
fresh ``/proc`` and ``/dev``, and a size-limited tmpfs at ``/scratch`` (``/tmp`` points there).
No ``/etc``, ``/root``, ``/home``, ``/var``, no network (a new network namespace holds only
loopback), no view of other processes (pid namespace).

Why neutral paths: the interpreter lives under ``/root/.pyenv`` and ``/root`` is mode 0700,
so an unprivileged uid cannot reach it on the host, and bwrap started *as* that uid could
not bind it either (it resolves bind sources with the caller's rights). So when we are root
we start bwrap as root (no user namespace needed), bind what Python needs at neutral paths,
and ``setpriv`` drops to an unprivileged uid with no capabilities before Python starts.
``LD_LIBRARY_PATH`` is needed because the interpreter's RUNPATH names its host location.
Each sandbox gets its own uid from a range, because RLIMIT_NPROC counts per uid: with one
shared uid, 200 sandboxes would share one process budget. When we are not root, bwrap runs
unprivileged in a user namespace and the sandbox keeps our uid (mapped to 65534).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from sandbox import determinism

INSIDE_PYTHON = "/opt/python"
INSIDE_SITE = "/opt/site-packages"
INSIDE_APP = "/opt/rlm"
INSIDE_SCRATCH = "/scratch"
INSIDE_SOCKET_DIR = "/run/rlm"
INSIDE_SOCKET = f"{INSIDE_SOCKET_DIR}/redis.sock"
NOBODY = 65534
# Well above the uids and subordinate-uid ranges distributions hand out.
SANDBOX_UID_FIRST = 3_000_000
SANDBOX_UID_COUNT = 1_000_000
PROBE_TIMEOUT_S = 30.0
# How the sandbox's interpreter starts: -P keeps the working directory off sys.path, -S skips
# ``site``: the runtime is stdlib only, and no .pth file of the host's installation runs
# code (or imports anything) at every sandbox start.
PYTHON_FLAGS = ["-P", "-S"]

# Imports the runtime, then reports where everything it loaded came from.
_PROBE = """
import json, os, sys
import sandbox.runtime
base = os.path.realpath(sys.base_prefix)
entries = sorted({os.path.realpath(p) for p in sys.path if p}, key=len, reverse=True)
used = set()
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if not path:
        continue
    path = os.path.realpath(path)
    for entry in entries:
        if path.startswith(entry + os.sep):
            used.add(entry)
            break
exe = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
print(json.dumps({"base": base, "exe": exe, "used": sorted(used)}))
"""


@dataclass(frozen=True)
class PythonLayout:
    """Where the host's interpreter and the runtime's dependencies live."""

    prefix: str
    executable: str
    site_dirs: tuple[str, ...]

    @property
    def inside_executable(self) -> str:
        return INSIDE_PYTHON + self.executable[len(self.prefix) :]

    @property
    def inside_pythonpath(self) -> str:
        sites = [f"{INSIDE_SITE}/{i}" for i in range(len(self.site_dirs))]
        return ":".join([INSIDE_APP, *sites])


def discover_layout(python: str, sandbox_root: str) -> PythonLayout:
    """Ask ``python`` which directories the runtime imports from (raises OSError/ValueError)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": sandbox_root}
    out = subprocess.run(
        [python, *PYTHON_FLAGS, "-c", _PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=False,
    )
    if out.returncode != 0:
        raise ValueError(f"{python} cannot import the sandbox runtime: {out.stderr.strip()[-500:]}")
    found = json.loads(out.stdout)
    prefix, exe = found["base"], found["exe"]
    if not exe.startswith(prefix + os.sep):
        raise ValueError(f"interpreter {exe} is not inside its prefix {prefix}")
    root = os.path.realpath(sandbox_root)
    sites = [
        d for d in found["used"] if not d.startswith(prefix + os.sep) and d != prefix and d != root
    ]
    return PythonLayout(prefix=prefix, executable=exe, site_dirs=tuple(sites))


class UidPool:
    """Hands out distinct unprivileged uids to the sandboxes of this process."""

    def __init__(self, first: int = SANDBOX_UID_FIRST, count: int = SANDBOX_UID_COUNT) -> None:
        self._first = first
        self._count = count
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            # Random rather than sequential so orchestrators on one host rarely collide.
            while True:
                uid = self._first + random.randrange(self._count)
                if uid not in self._used:
                    self._used.add(uid)
                    return uid

    def release(self, uid: int) -> None:
        with self._lock:
            self._used.discard(uid)


def _root_links() -> list[str]:
    """``/bin``, ``/lib``... as the host has them: symlinks into /usr, or directories."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


@dataclass(frozen=True)
class SocketMount:
    """What is bound read-only for Redis's socket, where, and the socket's path inside."""

    source: str
    target: str
    socket: str


def socket_mount(host_socket: str) -> SocketMount:
    """The socket's directory when the socket is alone in it, else the socket file alone.

    A restarted Redis replaces its socket file: a bind of the old file would show a dead
    socket for good, a bind of the directory shows the new one, so sandboxes reconnect.
    Siblings of the socket are never shown (the private server's socket has a directory of
    its own; put a system Redis's socket in one to get the same).
    """
    directory, name = os.path.split(os.path.abspath(host_socket))
    try:
        alone = os.listdir(directory) == [name]
    except OSError:
        alone = False
    if alone:
        return SocketMount(directory, INSIDE_SOCKET_DIR, f"{INSIDE_SOCKET_DIR}/{name}")
    return SocketMount(host_socket, INSIDE_SOCKET, INSIDE_SOCKET)


def command(
    layout: PythonLayout,
    *,
    bwrap: str,
    sandbox_root: str,
    scratch_bytes: int,
    redis_socket: SocketMount | None,
    uid: int | None,
    seccomp_fd: int | None,
    program: list[str],
) -> list[str]:
    """The full argv: bwrap, its options, then (as root) setpriv, then ``program``.

    ``uid`` None means we are not root: bwrap makes a user namespace instead.
    ``seccomp_fd`` is an inherited descriptor holding a BPF program (``seccomp.build``).
    """
    args = [bwrap, "--die-with-parent", "--new-session", "--clearenv"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    if uid is None:
        args += ["--unshare-all", "--unshare-user", "--disable-userns"]
        args += ["--uid", str(NOBODY), "--gid", str(NOBODY)]
    else:
        # Every namespace of --unshare-all but the user one: as root, bwrap would map only
        # uid 0 into it and setpriv could not switch to the sandbox's uid.
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        args += ["--unshare-cgroup-try"]
        # Only setpriv needs these, and it drops every capability before exec.
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    args += ["--hostname", "rlm-sandbox"]
    args += ["--ro-bind", "/usr", "/usr", *_root_links()]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--perms", "0755", "--dir", "/opt"]
    args += ["--ro-bind", layout.prefix, INSIDE_PYTHON]
    args += ["--perms", "0755", "--dir", INSIDE_SITE]
    for i, site in enumerate(layout.site_dirs):
        args += ["--ro-bind", site, f"{INSIDE_SITE}/{i}"]
    args += ["--perms", "0755", "--dir", INSIDE_APP]
    args += ["--ro-bind", os.path.join(sandbox_root, "sandbox"), f"{INSIDE_APP}/sandbox"]
    if redis_socket is not None:
        args += ["--perms", "0755", "--dir", "/run"]
        if redis_socket.target != INSIDE_SOCKET_DIR:
            args += ["--perms", "0755", "--dir", INSIDE_SOCKET_DIR]
        args += ["--ro-bind", redis_socket.source, redis_socket.target]
    args += ["--size", str(scratch_bytes), "--perms", "1777", "--tmpfs", INSIDE_SCRATCH]
    args += ["--symlink", INSIDE_SCRATCH, "/tmp", "--chdir", INSIDE_SCRATCH]
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": INSIDE_SCRATCH,
        "TMPDIR": INSIDE_SCRATCH,
        "PYTHONPATH": layout.inside_pythonpath,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "LD_LIBRARY_PATH": f"{INSIDE_PYTHON}/lib",
        **determinism.ENVIRONMENT,
    }
    for key, value in env.items():
        args += ["--setenv", key, value]
    args.append("--")
    if uid is not None:
        args += ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        args += ["--inh-caps=-all", "--bounding-set=-all", "--"]
    return [*args, layout.inside_executable, *program]
