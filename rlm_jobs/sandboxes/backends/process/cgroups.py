"""cgroup v1 memory, pids and cpu limits for one sandbox, where the host lets us.

Each sandbox gets ``rlm-sbx-<id>`` under the orchestrator's *own* cgroup of each controller
(read from ``/proc/self/cgroup``), so it stays inside whatever limits the orchestrator itself
runs under instead of escaping to the root. The child joins by writing ``0`` ("me") into
descriptors opened here, before it executes anything, so no process of the sandbox ever runs
outside the limits. ``destroy`` kills what is left and removes the directories.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
DESTROY_TIMEOUT_S = 5.0


def _own_paths() -> dict[str, Path]:
    """Controller -> the directory of this process's cgroup in the v1 hierarchy."""
    paths: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        _, names, rel = line.split(":", 2)
        for name in names.split(","):
            if name in CONTROLLERS:
                paths[name] = CGROUP_ROOT / name / rel.lstrip("/")
    return paths


def available() -> bool:
    """Whether we can create v1 cgroups for every controller we use."""
    paths = _own_paths()
    return all(
        c in paths and os.access(paths[c], os.W_OK) and (paths[c] / "cgroup.procs").exists()
        for c in CONTROLLERS
    )


class SandboxCgroups:
    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs

    @classmethod
    def create(cls, name: str, *, memory_bytes: int, max_pids: int, cpus: float) -> SandboxCgroups:
        """Make the cgroups and set their limits; raises OSError if the host refuses."""
        dirs = {c: p / name for c, p in _own_paths().items() if c in CONTROLLERS}
        made = cls({})
        try:
            for controller, path in dirs.items():
                path.mkdir()
                made.dirs[controller] = path
            _write(dirs["memory"] / "memory.limit_in_bytes", memory_bytes)
            memsw = dirs["memory"] / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # without it, swap would extend the limit
                _write(memsw, memory_bytes)
            _write(dirs["pids"] / "pids.max", max_pids)
            _write(dirs["cpu"] / "cpu.cfs_period_us", CPU_PERIOD_US)
            _write(dirs["cpu"] / "cpu.cfs_quota_us", int(cpus * CPU_PERIOD_US))
        except BaseException:
            made.destroy()
            raise
        return made

    def open_join_fds(self) -> list[int]:
        """Descriptors a child writes ``b"0"`` to in order to join every cgroup."""
        return [os.open(p / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for p in self.dirs.values()]

    def oom_kills(self) -> int:
        path = self.dirs.get("memory")
        if path is None:
            return 0
        try:
            for line in (path / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def destroy(self) -> None:
        """Kill every process still inside, then remove the directories."""
        deadline = time.monotonic() + DESTROY_TIMEOUT_S
        for controller, path in list(self.dirs.items()):
            while True:
                pids = _pids(path)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    path.rmdir()
                    del self.dirs[controller]
                    break
                except FileNotFoundError:
                    del self.dirs[controller]
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        log.error("could not remove cgroup %s: %s", path, exc)
                        break
                    time.sleep(0.01)


def remove_stale(min_age_s: float = 300.0) -> int:
    """Remove empty sandbox cgroups left by an orchestrator that died; returns how many.

    Only empty ones can be removed at all, and only old ones are tried, so a cgroup that
    another orchestrator has just made and not yet moved its child into is left alone.
    """
    removed = 0
    now = time.time()
    for path in _own_paths().values():
        for group in path.glob("rlm-sbx-*"):
            try:
                if now - group.stat().st_ctime >= min_age_s and not _pids(group):
                    group.rmdir()
                    removed += 1
            except OSError:
                continue
    return removed


def _pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _write(path: Path, value: int) -> None:
    path.write_text(str(value))
