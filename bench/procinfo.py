"""Reading a process from /proc: peak and current RSS, threads, its TCP sockets."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS in bytes and Threads, from /proc/<pid>/status."""
    wanted = {"VmHWM": 1024, "VmRSS": 1024, "Threads": 1}
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            out[key] = int(value.split()[0]) * wanted[key]
    return out


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False if denied."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def tcp_local_ports(pid: int) -> set[int]:
    """Local ports of the TCP sockets ``pid`` holds (IPv4 and IPv6)."""
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces; ppid is the 2nd field after the ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


def is_python(pid: int) -> bool:
    """The process runs a Python interpreter (not bwrap or setpriv around one)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return b"python" in argv0.rsplit(b"/", 1)[-1]


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU time of ``pid`` so far (its threads included), plus by default
    that of its children that have exited and been waited for (sandboxes, for an
    orchestrator)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3; utime, stime, cutime, cstime are 14-17.
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / _TICKS


class CpuMeter:
    """CPU seconds spent by named groups of processes between ``start`` and ``stop``."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        # A negative pid means "this process alone, not its children".
        return {
            name: sum(cpu_seconds(abs(p), children=p > 0) for p in pids)
            for name, pids in self.groups.items()
        }

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        now = self._now()
        for name, value in now.items():
            self.used[name] = self.used.get(name, 0.0) + value - self._start[name]
        return self.used


def descends_from(pid: int, ancestor: int, depth: int = 8) -> bool:
    """``pid`` is ``ancestor`` or one of its descendants (up to ``depth`` generations)."""
    for _ in range(depth):
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            return False
    return False


class SandboxCpuSampler:
    """CPU time of sandbox runtimes started under ``ancestors``, sampled while they live.

    A sandbox is SIGKILLed with its bwrap parent, so its CPU time never reaches its
    orchestrator's "children" counters; this thread reads each runtime's own counters
    every ``interval_s`` and keeps the last value seen (a runtime's last fraction of an
    interval, spent idle waiting to be stopped, is lost).
    """

    def __init__(self, ancestors: list[int], interval_s: float = 0.2) -> None:
        self._ancestors = ancestors
        self._interval_s = interval_s
        self._seen: dict[int, float] = {}
        self._ignored: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sandbox-cpu", daemon=True)

    def _scan(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid in self._ignored:
                continue
            if pid not in self._seen:
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                ours = b"sandbox.runtime" in cmdline and is_python(pid)
                if not ours or not any(descends_from(pid, a) for a in self._ancestors):
                    self._ignored.add(pid)
                    continue
            used = cpu_seconds(pid, children=False)
            if used:
                self._seen[pid] = used

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._scan()

    def start(self) -> None:
        self._scan()
        self._thread.start()

    def stop(self) -> tuple[float, int]:
        """(CPU seconds, number of sandboxes seen)."""
        self._stop.set()
        self._thread.join(10)
        return sum(self._seen.values()), len(self._seen)


def sandbox_runtimes(ancestor: int) -> list[int]:
    """Live sandbox runtime interpreters (not their bwrap wrappers) under ``ancestor``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        pid = int(entry.name)
        if b"sandbox.runtime" in cmdline and is_python(pid) and descends_from(pid, ancestor):
            out.append(pid)
    return out
