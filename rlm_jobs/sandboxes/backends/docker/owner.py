"""Who launched a sandbox container: labels that outlive the launching process.

Every sandbox container carries its sandbox id and its launcher: boot id, pid namespace,
pid and process start time (a reused pid is told apart), and the container the launcher
ran in, when it ran in one (compose deployments). ``orphans`` reads them back.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

# Label keys on every sandbox container: its sandbox id, and who launched it.
SANDBOX_LABEL = "rlm-jobs.sandbox"
# "<boot id>/<pid namespace inode>/<pid>/<process start time>" of the launching process.
OWNER_LABEL = "rlm-jobs.owner"
# The container the launching process ran in, when it ran in one (compose deployments).
OWNER_CONTAINER_LABEL = "rlm-jobs.owner-container"

# A container's /etc/hostname is bound from /var/lib/docker/containers/<id>/hostname.
_MOUNT_ROOT_ID = re.compile(r"/containers/([0-9a-f]{64})/")
# cgroup v1 paths: /docker/<id> (cgroupfs driver) or docker-<id>.scope (systemd driver).
_CGROUP_ID = re.compile(r"/docker[/-]([0-9a-f]{64})")


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def pid_namespace() -> str:
    link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    return link.partition("[")[2].rstrip("]")


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot; tells a reused pid apart."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces and parentheses.
    return raw.rpartition(")")[2].split()[19]


def own_container_id() -> str | None:
    """The id of the Docker container this process runs in, if any."""
    if not Path("/.dockerenv").exists():
        return None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4] in ("/etc/hostname", "/etc/resolv.conf"):
                match = _MOUNT_ROOT_ID.search(fields[3])
                if match:
                    return match.group(1)
    with contextlib.suppress(OSError):
        match = _CGROUP_ID.search(Path("/proc/self/cgroup").read_text())
        if match:
            return match.group(1)
    return None


@dataclass(frozen=True)
class Owner:
    boot_id: str
    pid_namespace: str
    pid: int
    start_ticks: str

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(boot_id(), pid_namespace(), pid, start_ticks(pid) or "?")

    @classmethod
    def parse(cls, label: str) -> Owner | None:
        parts = label.split("/")
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3])

    def label(self) -> str:
        return f"{self.boot_id}/{self.pid_namespace}/{self.pid}/{self.start_ticks}"


def labels(sandbox_id: str) -> dict[str, str]:
    """The labels of a container this process launches for ``sandbox_id``."""
    own = own_container_id()
    return {
        SANDBOX_LABEL: sandbox_id,
        OWNER_LABEL: Owner.current().label(),
        **({OWNER_CONTAINER_LABEL: own} if own else {}),
    }
