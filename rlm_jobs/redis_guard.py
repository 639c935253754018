"""A guard that ties a private ``redis-server`` to the process that started it.

Run as a script (stdlib only, ``python -I rlm_jobs/redis_guard.py WORKDIR redis-server
ARGS...``) by ``RedisServer``: it starts the server as its own child, prints the server's
pid, then waits for one of three things:

- **its stdin reaches end of file**: the owner closed the pipe (``RedisServer.stop``) or
  ended in any way at all (exit, ``os._exit``, SIGKILL): the kernel closes the owner's
  end of the pipe with the process. The server is stopped (SIGTERM, then SIGKILL) and its
  ``WORKDIR`` removed: nobody is left to use it.
- **``kill`` on stdin**: the server is killed with SIGKILL at once (tests of Redis crashes).
- **the server exits** on its own: the guard exits too, with the server's status.

The guard itself is single-threaded, so the server's ``PR_SET_PDEATHSIG`` (which fires when
the *thread* that forked it ends) is reliable here: a guard that is killed takes the server
with it. The owner cannot use that signal directly: its forking thread may end long before
it does.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys

# How often the guard checks whether the server exited by itself.
POLL_S = 0.5
# A server asked to stop gets this long to exit before it is killed.
STOP_WAIT_S = 5.0
_PR_SET_PDEATHSIG = 1


class _Stop(Exception):
    """A signal asked the guard to stop its server."""


def _on_signal(signum: int, frame: object) -> None:
    raise _Stop


def _die_with(guard_pid: int, prctl: object) -> None:
    """Runs in the server's process before exec: end with the guard, even by SIGKILL."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # type: ignore[operator]
    if os.getppid() != guard_pid:  # the guard died before the signal was armed
        os._exit(1)


def _stop(server: subprocess.Popen[bytes], *, kill: bool) -> int:
    if server.poll() is None:
        if kill:
            server.kill()
        else:
            server.terminate()
            try:
                return server.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                server.kill()
    return server.wait()


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("usage: redis_guard.py WORKDIR redis-server [ARGS...]\n")
        return 2
    workdir, argv = argv[0], argv[1:]
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    guard_pid = os.getpid()
    server = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: _die_with(guard_pid, prctl),  # the guard has no other thread
    )
    try:
        sys.stdout.write(f"{server.pid}\n")
        sys.stdout.flush()
        stdin = sys.stdin.fileno()
        while True:
            readable, _, _ = select.select([stdin], [], [], POLL_S)
            if readable:
                data = os.read(stdin, 64)
                if not data:
                    break
                if b"kill" in data:
                    return _stop(server, kill=True)
            code = server.poll()
            if code is not None:
                return code
    except (_Stop, OSError):
        pass
    code = _stop(server, kill=False)
    shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
