"""The end of every sandbox child's stdout/stderr, kept in memory and read on one thread.

The runtime's own output goes to a pipe whose last few KB are kept (never on disk, which
model code could fill); that tail explains a crash. A thread per sandbox would mostly sit
blocked in ``read``, 200 sandboxes would mean 200 threads, so one ``OutputReader`` per
backend serves every pipe. Its thread starts with the first pipe and ends when the last
one has reached end of file (its process and everything it started have exited).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
from typing import IO

log = logging.getLogger(__name__)

# How much of the runtime's log a crash report quotes.
LOG_TAIL_BYTES = 2000
THREAD_NAME = "rlm-sandbox-output"


class OutputTail:
    """The end of one child's output pipe, drained by an ``OutputReader``."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe
        self._tail = b""
        self._ended = threading.Event()

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


class OutputReader:
    """One thread reading the output pipes of every sandbox of one backend."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = -1
        self._wake_w = -1
        self._pipes = 0
        self._pid = 0

    def tail(self, pipe: IO[bytes]) -> OutputTail:
        """Start reading ``pipe``; the returned tail holds its end."""
        tail = OutputTail(pipe)
        os.set_blocking(tail.fileno(), False)
        with self._lock:
            if self._selector is None or self._pid != os.getpid():
                self._start()  # first pipe, or a forked child: the thread did not come along
            assert self._selector is not None
            self._selector.register(tail.fileno(), selectors.EVENT_READ, tail)
            self._pipes += 1
            # Selectors other than epoll only see a new pipe on their next call; a full
            # wake-up pipe means a wake-up is pending anyway.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\0")
        return tail

    def _start(self) -> None:
        """Called with the lock held."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pipes = 0
        self._pid = os.getpid()
        thread = threading.Thread(
            target=self._run, args=(self._selector,), name=THREAD_NAME, daemon=True
        )
        thread.start()

    def _run(self, selector: selectors.BaseSelector) -> None:
        while True:
            for key, _ in selector.select():
                try:
                    self._serve(selector, key)
                except Exception:  # this thread must live on for the other sandboxes' pipes
                    log.exception("reading sandbox output (fd %d)", key.fd)
            with self._lock:
                if self._selector is selector and self._pipes == 0:
                    self._stop(selector)
                    return

    def _stop(self, selector: selectors.BaseSelector) -> None:
        """Called with the lock held, when no pipe is left: the next one starts afresh."""
        self._selector = None
        selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _serve(self, selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        tail: OutputTail | None = key.data
        chunk = _read_available(key.fd)
        if tail is None:
            return  # the wake-up pipe: the registration has taken effect
        if chunk:
            tail.take(chunk)
        elif chunk is not None:  # end of file
            with self._lock:
                selector.unregister(key.fd)
                self._pipes -= 1
            tail.end()


def _read_available(fd: int) -> bytes | None:
    """What the pipe holds (b"" at end of file), or None if nothing after all."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:  # the pipe broke: treat it as ended
        return b""
