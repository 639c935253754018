"""Per-cell capture of ``sys.stdout``/``sys.stderr`` with bounded memory.

The proxies are installed once; while a cell runs they write into that cell's buffers,
from any thread (model code may print from a thread pool). Outside a cell, stray writes
are dropped so a leftover thread cannot fill the runtime's log. Output written at the file
descriptor level (``os.write(1, ...)``, child processes) is not captured.
"""

from __future__ import annotations

import io
import sys
import threading


class BoundedBuffer:
    """Keeps the first ``limit`` characters and counts the rest, so a print loop costs no memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[str] = []
        self._kept = 0
        self._cut = 0
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            room = self.limit - self._kept
            if room > 0:
                piece = text[:room]
                self._parts.append(piece)
                self._kept += len(piece)
                self._cut += len(text) - len(piece)
            else:
                self._cut += len(text)

    def text(self) -> str:
        with self._lock:
            body = "".join(self._parts)
            cut = self._cut
        if cut:
            body += (
                f"\n... [output truncated: {cut:,} more characters were cut; "
                "print summaries or slices instead]"
            )
        return body


class _Proxy(io.TextIOBase):
    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name
        self.target: BoundedBuffer | None = None

    @property
    def encoding(self) -> str:  # type: ignore[override]  # fixed: we only hold str
        return "utf-8"

    @property
    def name(self) -> str:
        return self._name

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        target = self.target
        if target is not None:
            target.write(s)
        return len(s)

    def flush(self) -> None:
        return None


class Capture:
    """Owns the two proxies; ``begin``/``end`` bracket one cell."""

    def __init__(self) -> None:
        self.stdout = _Proxy("<stdout>")
        self.stderr = _Proxy("<stderr>")

    def install(self) -> None:
        sys.stdout = self.stdout
        sys.stderr = self.stderr

    def begin(self, out: BoundedBuffer, err: BoundedBuffer) -> None:
        # Model code may have replaced sys.stdout in an earlier cell; take it back.
        self.install()
        self.stdout.target = out
        self.stderr.target = err

    def end(self) -> None:
        self.stdout.target = None
        self.stderr.target = None
        self.install()
