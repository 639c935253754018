"""A small Redis client for the sandbox runtime: RESP2 over one socket, stdlib only.

Why not redis-py: importing it (and pydantic) was most of a sandbox's start-up CPU
(docs/benchmarks.md), and a sandbox starts for every job. The runtime needs four commands
(AUTH, GET, PUBLISH, SUBSCRIBE), so a client of its own is small.

One ``Connection`` carries one conversation: ``call``/``pipeline`` are thread-safe (a lock
around each request and its replies), and a subscribed connection is read by one thread
with ``read_push``. A reply that arrives in pieces is always read whole, so a timeout can
never leave half a reply in the buffer. Anything that interrupts a request (an error, or an
exception raised into the thread) leaves the stream out of step, so the socket is dropped;
the next command opens a new one, except on a subscribed connection (its subscription
would be gone). ``main_thread_in_request`` tells the cell timer when the main thread is
inside a request, so it can wait for the next tick instead of breaking the connection.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Sequence
from typing import Any

# Replies bigger than this are read straight into their own buffer (a context is one GET).
_BIG_BULK = 1 << 20
_CHUNK = 1 << 16

Arg = str | bytes | int | float


class RedisError(Exception):
    """Anything that went wrong talking to Redis."""


class ConnectionLost(RedisError):
    """The socket closed, failed or timed out: this connection is unusable now."""


class ReplyError(RedisError):
    """Redis answered with an error (``-ERR ...``, ``-NOPERM ...``)."""


class AuthFailed(ConnectionLost):
    """Redis refused our credentials: this connection is unusable, a later one may not be
    (a restarted Redis knows the sandbox's user again once its host has told it)."""


def encode_command(args: Sequence[Arg]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = str(arg).encode()
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


class Connection:
    def __init__(
        self,
        *,
        unix_socket: str | None = None,
        host: str = "127.0.0.1",
        port: int = 6379,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._address = (unix_socket, host, port)
        self._auth: list[Arg] | None = None
        if password is not None:
            self._auth = ["AUTH", username, password] if username else ["AUTH", password]
        self._timeouts = (timeout_s, connect_timeout_s)
        self._lock = threading.Lock()
        self._subscribed = False
        self._closed = False
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._pos = 0
        self._broken: str | None = "not connected"
        with self._lock:
            self._open()

    def _open(self) -> None:
        """Connect and authenticate (called with the lock held)."""
        unix_socket, host, port = self._address
        timeout_s, connect_timeout_s = self._timeouts
        try:
            if unix_socket:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(connect_timeout_s)
                    sock.connect(unix_socket)
                except OSError:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((host, port), timeout=connect_timeout_s)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            self._broken = f"cannot connect to Redis: {exc}"
            raise ConnectionLost(self._broken) from exc
        sock.settimeout(timeout_s)
        self._sock = sock
        self._buf = bytearray()
        self._pos = 0
        self._broken = None
        if self._auth is not None:
            (reply,) = self._exchange([self._auth])
            if isinstance(reply, ReplyError):
                self._drop("authentication failed")
                raise AuthFailed(f"authentication failed: {reply}")

    # ---- commands ------------------------------------------------------------------------

    def call(self, *args: Arg) -> Any:
        """Send one command and return its reply; an error reply raises ``ReplyError``."""
        reply = self.pipeline_call([args])[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def pipeline_call(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send all commands at once and read every reply (error replies are returned)."""
        with self._lock:
            if self._broken is not None:
                if self._closed or self._subscribed:
                    raise ConnectionLost(f"the Redis connection is unusable ({self._broken})")
                self._open()
            return self._exchange(commands)

    def _exchange(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """One request and its replies, with the lock held; any interruption drops the socket."""
        payload = b"".join(encode_command(c) for c in commands)
        with _InRequest():
            try:
                self._connected().sendall(payload)
                return [self._read_reply() for _ in commands]
            except (OSError, ValueError, ConnectionLost) as exc:
                raise ConnectionLost(self._drop(exc)) from exc
            except BaseException as exc:  # MemoryError, or an exception raised into the thread
                self._drop(exc)
                raise

    def get(self, key: str) -> bytes | bytearray | None:
        value = self.call("GET", key)
        return value if value is None or isinstance(value, (bytes, bytearray)) else None

    def publish(self, channel: str, message: str | bytes) -> Any:
        return self.call("PUBLISH", channel, message)

    def pipeline(self, transaction: bool = False) -> Pipeline:
        if transaction:
            raise ValueError("the sandbox client sends no MULTI/EXEC")
        return Pipeline(self)

    # ---- pub/sub -------------------------------------------------------------------------

    def subscribe(self, channel: str) -> None:
        """SUBSCRIBE and wait for the confirmation; afterwards only ``read_push`` is valid."""
        reply = self.call("SUBSCRIBE", channel)
        self._subscribed = True
        if not (isinstance(reply, list) and reply and reply[0] == b"subscribe"):
            raise RedisError(f"unexpected answer to SUBSCRIBE: {reply!r}")

    def read_push(self, timeout_s: float) -> list[Any] | None:
        """The next pushed message of a subscribed connection, or None after ``timeout_s``."""
        with self._lock:
            if self._broken is not None:
                raise ConnectionLost(f"the Redis connection is unusable ({self._broken})")
            try:
                if self._pos >= len(self._buf):
                    readable, _, _ = select.select([self._connected()], [], [], timeout_s)
                    if not readable:
                        return None
                reply = self._read_reply()
            except (OSError, ValueError, ConnectionLost) as exc:
                raise ConnectionLost(self._drop(exc)) from exc
            except BaseException as exc:
                self._drop(exc)
                raise
        if isinstance(reply, ReplyError):
            raise reply
        return reply if isinstance(reply, list) else None

    def close(self) -> None:
        self._closed = True
        self._drop("closed")

    # ---- reading replies -----------------------------------------------------------------

    def _connected(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionLost("not connected")
        return self._sock

    def _drop(self, why: BaseException | str) -> str:
        """Close the socket: after an interrupted request the stream cannot be trusted."""
        if self._broken is None:
            self._broken = why if isinstance(why, str) else (str(why) or type(why).__name__)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        return self._broken

    def _fill(self) -> None:
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        chunk = self._connected().recv(_CHUNK)
        if not chunk:
            raise ConnectionLost("Redis closed the connection")
        self._buf += chunk

    def _line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n", self._pos)
            if end >= 0:
                line = bytes(self._buf[self._pos : end])
                self._pos = end + 2
                return line
            self._fill()

    def _take(self, n: int) -> bytes | bytearray:
        """The next ``n`` bytes and the CRLF after them."""
        if n >= _BIG_BULK:
            return self._take_big(n)
        while len(self._buf) - self._pos < n + 2:
            self._fill()
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n + 2
        return data

    def _take_big(self, n: int) -> bytearray:
        out = bytearray(n)
        have = min(n, len(self._buf) - self._pos)
        out[:have] = self._buf[self._pos : self._pos + have]
        self._pos += have
        view = memoryview(out)
        while have < n:
            got = self._connected().recv_into(view[have:], min(n - have, _BIG_BULK))
            if not got:
                raise ConnectionLost("Redis closed the connection mid-reply")
            have += got
        while len(self._buf) - self._pos < 2:
            self._fill()
        self._pos += 2
        return out

    def _read_reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return ReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._take(size)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._read_reply() for _ in range(count)]
        raise ConnectionLost(f"unexpected data from Redis: {line[:40]!r}")


_main_busy = False


def main_thread_in_request() -> bool:
    """Whether the main thread is between sending a request and reading its last reply."""
    return _main_busy


class _InRequest:
    """Marks the main thread's requests (other threads are never interrupted by SIGALRM)."""

    def __enter__(self) -> None:
        global _main_busy
        if threading.current_thread() is threading.main_thread():
            _main_busy = True

    def __exit__(self, *exc: object) -> None:
        global _main_busy
        if threading.current_thread() is threading.main_thread():
            _main_busy = False


class Pipeline:
    """Commands queued and sent in one round trip (no MULTI: the order is all we need)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._commands: list[tuple[Arg, ...]] = []

    def execute_command(self, *args: Arg) -> Pipeline:
        self._commands.append(args)
        return self

    def execute(self) -> list[Any]:
        commands, self._commands = self._commands, []
        replies = self._conn.pipeline_call(commands)
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise reply
        return replies
