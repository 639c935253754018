"""A seccomp filter that keeps sandboxed code out of new user namespaces.

An unprivileged process may create a user namespace and be "root" inside it, which opens a
large part of the kernel (mounts, netfilter, ...) to it: the usual first step of a container
escape. Bubblewrap's own ``--disable-userns`` needs a user namespace, which the root-started
sandbox does not use, so the filter does it: ``clone``/``unshare`` with CLONE_NEWUSER fail
with EPERM, ``clone3`` (whose flags seccomp cannot read) fails with ENOSYS so libc falls back
to ``clone``, and x32-ABI syscall numbers are refused so they cannot sidestep the checks.
Only x86-64 is described; elsewhere ``build`` returns None and the sandbox runs without it.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
CLONE_NEWUSER = 0x10000000
SYS_CLONE, SYS_UNSHARE, SYS_CLONE3 = 56, 272, 435

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_KILL_PROCESS = 0x80000000

# Classic BPF opcodes.
LD_ABS_W = 0x20
JEQ_K = 0x15
JGE_K = 0x35
JSET_K = 0x45
RET_K = 0x06

# seccomp_data: int nr; u32 arch; u64 ip; u64 args[6] (little-endian, so args[0] low word at 16).
OFF_NR, OFF_ARCH, OFF_ARG0_LOW = 0, 4, 16

Insn = tuple[int, str | int, str | int, int]


def _assemble(program: list[tuple[str | None, Insn]]) -> bytes:
    """Resolve label jumps into the relative offsets classic BPF wants."""
    labels = {label: i for i, (label, _) in enumerate(program) if label}
    out = b""
    for i, (_, (code, jt, jf, k)) in enumerate(program):
        offsets = [labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
        out += struct.pack("<HBBI", code, offsets[0], offsets[1], k)
    return out


def build() -> bytes | None:
    if platform.machine() != "x86_64":
        return None
    return _assemble(
        [
            (None, (LD_ABS_W, 0, 0, OFF_ARCH)),
            (None, (JEQ_K, "arch_ok", 0, AUDIT_ARCH_X86_64)),
            (None, (RET_K, 0, 0, RET_KILL_PROCESS)),
            ("arch_ok", (LD_ABS_W, 0, 0, OFF_NR)),
            (None, (JGE_K, "eperm", 0, X32_SYSCALL_BIT)),
            (None, (JEQ_K, "enosys", 0, SYS_CLONE3)),
            (None, (JEQ_K, "flags", 0, SYS_UNSHARE)),
            (None, (JEQ_K, "flags", "allow", SYS_CLONE)),
            ("flags", (LD_ABS_W, 0, 0, OFF_ARG0_LOW)),
            (None, (JSET_K, "eperm", "allow", CLONE_NEWUSER)),
            ("allow", (RET_K, 0, 0, RET_ALLOW)),
            ("eperm", (RET_K, 0, 0, RET_ERRNO | errno.EPERM)),
            ("enosys", (RET_K, 0, 0, RET_ERRNO | errno.ENOSYS)),
        ]
    )


def filter_fd() -> int | None:
    """A fresh descriptor holding the filter; bwrap reads it to the end, so one per use."""
    program = build()
    if program is None:
        return None
    fd = os.memfd_create("rlm-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
