"""The REPL server that runs inside a sandbox: ``python -m sandbox.runtime``.

Startup: read one ``Bootstrap`` JSON line from stdin (never argv or env, so the password
stays out of process listings), connect to Redis, SUBSCRIBE to the input channel and wait
for the confirmation, load ``context`` if the bootstrap names one, then publish ``Ready``.
Only now can the host's first message not be lost. A sandbox started ahead of demand (a
pool's) has no context yet: ``LoadContext`` gives it one, answered by ``ContextLoaded``, or
by ``Fatal`` and exit when the context cannot be read.

The runtime writes nothing to Redis: it publishes on its output channel (``sandbox.wire``:
large messages in parts, the ones that must arrive again until the host acknowledges them,
``sandbox.outbox``) and GETs what the host gave it (its context, the host's stored replies).

Threads: the main thread runs cells (so SIGALRM can interrupt them); a reader thread takes
pub/sub messages and routes them (cells to the main thread, sub-call replies to their
waiters, acknowledgements to the outbox); a keeper thread publishes again what the host has
not acknowledged, sends heartbeats and exits the process when Redis or the parent is gone
(with ``Bootstrap.stdin_lifeline``: also when the host's end of stdin closes, which it does
when the host dies, whatever process is left in between).

A Redis restart costs nothing but time: every command, and the subscription, is tried
again for ``Bootstrap.reconnect_s`` (authentication included: a restarted Redis has
forgotten the sandbox's ACL user until its host restores it). Once subscribed again the
runtime sends a heartbeat naming the last cell or context load it received, so a host whose
request was published while nobody listened sends it again.

Dependencies: the stdlib only (``sandbox.resp`` speaks to Redis), never ``rlm_jobs``: a
runtime starts for every job, and its start-up cost is mostly imports.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sandbox import determinism, resp, wire
from sandbox.outbox import Outbox
from sandbox.records import CellResult, SubcallResult
from sandbox.repl import Repl
from sandbox.subcalls import SubcallClient, make_functions
from sandbox.tools import make_tools

# A bootstrap line is small (with the most tools and the longest docstrings the wire allows,
# some 650 KB); a larger one is not ours.
MAX_BOOTSTRAP_BYTES = 1024 * 1024
# Long enough for a 100 MB context GET over a Unix socket, short enough to notice a dead server.
SOCKET_TIMEOUT_S = 120.0
# Heartbeats that fail this many times in a row (each retried for reconnect_s) mean Redis
# is gone.
MAX_HEARTBEAT_FAILURES = 3
# Pauses between tries to get a lost connection back: doubling from the first to the cap
# (rlm_jobs.timing.REDIS_RETRY_*, copied: the runtime imports nothing from rlm_jobs).
RECONNECT_FIRST_S = 0.05
RECONNECT_CAP_S = 1.0
# How often the keeper thread looks for messages to publish again.
KEEPER_TICK_S = 0.25
# A runtime that cannot go on waits this long for the host to hear why before it exits.
FATAL_ACK_WAIT_S = 10.0
# Parts published per round trip: bounds the request a large message builds at once.
PARTS_PER_PIPELINE = 256
# Malformed messages remembered for the next cell's report.
MAX_PROTOCOL_NOTES = 5
# Output kept of a cell whose result was too large to send.
LARGE_RESULT_KEEP_CHARS = 100_000

EXIT_BAD_BOOTSTRAP = 2
EXIT_REDIS_LOST = 3
EXIT_PARENT_LOST = 4
EXIT_FATAL = 5


def log(text: str) -> None:
    try:
        sys.__stderr__.write(f"[rlm-sandbox] {text}\n")  # type: ignore[union-attr]
        sys.__stderr__.flush()  # type: ignore[union-attr]
    except (OSError, ValueError):
        pass


def connect(boot: wire.Bootstrap) -> resp.Connection:
    return resp.Connection(
        unix_socket=boot.redis_unix_socket,
        host=boot.redis_host or "127.0.0.1",
        port=boot.redis_port or 6379,
        username=boot.username,
        password=boot.password,
        timeout_s=SOCKET_TIMEOUT_S,
    )


T = TypeVar("T")


def retrying(what: str, attempt: Callable[[], T], within_s: float, parent: int) -> T:
    """``attempt()``, tried again on a lost connection until ``within_s`` have passed.

    Exits at once if the ``parent`` process is gone: nobody is left to reconnect for (its
    Redis user is being swept, and the heartbeat thread may be the one retrying).
    """
    deadline = time.monotonic() + within_s
    pause = RECONNECT_FIRST_S
    failures = 0
    while True:
        try:
            result = attempt()
        except resp.ConnectionLost as exc:
            failures += 1
            if os.getppid() != parent:
                log("the parent process is gone; exiting")
                os._exit(EXIT_PARENT_LOST)
            if time.monotonic() + pause > deadline:
                raise
            if failures == 1:
                log(f"{what} failed ({exc}); trying again for up to {within_s:g} s")
            time.sleep(pause)
            pause = min(RECONNECT_CAP_S, pause * 2)
            continue
        if failures:
            log(f"{what} worked again after {failures} failed tries")
        return result


class Runtime:
    """Commands go over ``client`` (any thread); the input channel has its own connection."""

    def __init__(
        self, boot: wire.Bootstrap, client: resp.Connection, lifeline: int | None = None
    ) -> None:
        self.boot = boot
        # Our end of the host's stdin pipe (``Bootstrap.stdin_lifeline``), if it keeps one.
        self._lifeline = lifeline
        self.redis = client
        self._seq = itertools.count()
        self._inbox: queue.Queue[wire.ExecCell | wire.Shutdown | wire.LoadContext] = queue.Queue()
        self.outbox = Outbox(self._publish)
        self._busy = False
        self._seen_requests: set[str] = set()
        # The id of the last cell or context load received, for heartbeats (the reader
        # thread writes it).
        self._last_received: str | None = None
        self._protocol_notes: list[str] = []
        self._notes_lock = threading.Lock()
        self._parent = os.getppid()
        self.subcalls = SubcallClient(self.send, self._fetch_reply, self.next_seq)

    def next_seq(self) -> int:
        return next(self._seq)

    def send(self, msg: wire.Message) -> None:
        """Publish ``msg``; a ``RELIABLE`` one again and again until the host acknowledges it.

        Raises WireError for a message larger than the wire carries.
        """
        payloads = wire.payloads_to_host(msg)
        if not isinstance(msg, wire.RELIABLE):
            self._publish(payloads)
            return
        try:
            self.outbox.send(msg.id, payloads)
        except resp.RedisError as exc:  # it stays in the outbox: the keeper tries again
            log(f"publishing {msg.TYPE} failed ({exc}); it will be published again")

    def _publish(self, payloads: list[str]) -> None:
        # The client reconnects on its next command; a message sent twice is harmless
        # (the host drops repeated ids), one lost would stall the host.
        retrying(
            "publishing", lambda: self._publish_once(payloads), self.boot.reconnect_s, self._parent
        )

    def heartbeat(self) -> wire.Heartbeat:
        return wire.Heartbeat(
            seq=self.next_seq(), id=wire.new_id(), last_received=self._last_received
        )

    def _publish_once(self, payloads: list[str]) -> None:
        if len(payloads) == 1:
            self.redis.publish(self.boot.channel_out, payloads[0])
            return
        for start in range(0, len(payloads), PARTS_PER_PIPELINE):
            pipe = self.redis.pipeline()
            for payload in payloads[start : start + PARTS_PER_PIPELINE]:
                pipe.execute_command("PUBLISH", self.boot.channel_out, payload)
            pipe.execute()

    def _fetch_reply(self, request_id: str) -> wire.ToSandbox | None:
        try:
            return wire.fetch_reply_to_sandbox(self.redis, self.boot.message_key_prefix, request_id)
        except (wire.WireError, resp.RedisError) as exc:
            log(f"could not read the stored reply to {request_id}: {exc}")
            return None

    # ---- startup -------------------------------------------------------------------------

    def subscribe(self) -> resp.Connection:
        """A second connection, subscribed to the input channel (confirmed on return)."""
        return retrying("subscribing", self._subscribe_once, self.boot.reconnect_s, self._parent)

    def _subscribe_once(self) -> resp.Connection:
        sub = connect(self.boot)
        try:
            sub.subscribe(self.boot.channel_in)
        except BaseException:
            sub.close()
            raise
        return sub

    def load_context(self, key: str) -> tuple[Any, int]:
        """The context stored under ``key`` and its size in bytes."""
        started = time.monotonic()
        blob = retrying(
            "reading the context", lambda: self.redis.get(key), self.boot.reconnect_s, self._parent
        )
        if blob is None:
            raise LookupError(f"context {key} is not in Redis")
        value = json.loads(blob)
        log(f"context loaded: {len(blob):,} bytes in {time.monotonic() - started:.2f} s")
        return value, len(blob)

    def send_fatal(self, message: str) -> None:
        """Tell the host why the runtime stops, and give it time to hear it."""
        fatal = wire.Fatal(seq=self.next_seq(), id=wire.new_id(), message=message[:2000])
        with contextlib.suppress(resp.RedisError):
            self.send(fatal)
            if not self.outbox.wait_acked(fatal.id, FATAL_ACK_WAIT_S):
                log("the host did not acknowledge the fatal error")

    # ---- threads -------------------------------------------------------------------------

    def read_forever(self, sub: resp.Connection) -> None:
        while True:
            try:
                push = sub.read_push(timeout_s=1.0)
            except resp.RedisError as exc:
                sub.close()
                sub = self._resubscribe(exc)
                continue
            if push is not None and len(push) == 3 and push[0] == b"message":
                self.route(push[2])

    def _resubscribe(self, lost: resp.RedisError) -> resp.Connection:
        """A new subscription after ``lost``; exits if Redis stays away."""
        log(f"lost the subscription ({lost}); subscribing again")
        try:
            sub = self.subscribe()
            # Messages published meanwhile are gone: say which cell we have.
            self.send(self.heartbeat())
        except resp.RedisError as exc:
            log(f"lost the Redis connection: {exc}; exiting")
            os._exit(EXIT_REDIS_LOST)
        return sub

    def route(self, raw: bytes | str) -> None:
        try:
            msg = wire.decode_to_sandbox(self.redis, self.boot.message_key_prefix, raw)
        except (wire.WireError, resp.RedisError) as exc:
            self.reject(raw, str(exc))
            return
        if isinstance(msg, wire.Ack):
            self.outbox.acked(msg.reply_to)
        elif isinstance(msg, wire.SubcallReply):
            if not self.subcalls.deliver(msg.reply_to, msg.results):
                log(f"reply to unknown or finished sub-call {msg.reply_to}")
        elif isinstance(msg, wire.ExecCell | wire.LoadContext):
            self._last_received = msg.id
            # A resent cell must not run twice, nor a resent context load load twice.
            if msg.id not in self._seen_requests:
                self._seen_requests.add(msg.id)
                self._inbox.put(msg)
        elif isinstance(msg, wire.Shutdown):
            self._inbox.put(msg)
            if self._busy:  # a cell that will not end must not delay shutdown
                log("shutdown requested during a cell")
                os._exit(0)

    def reject(self, raw: bytes | str, problem: str) -> None:
        """A message we cannot use: answer its sender if we can tell who waits, else note it."""
        text = raw[:200] if isinstance(raw, str) else raw[:200].decode("utf-8", "replace")
        log(f"rejected a malformed message ({problem}): {text!r}")
        head = _json_head(raw)
        msg_id = head.get("id") if isinstance(head.get("id"), str) else None
        reply_to = head.get("reply_to") if isinstance(head.get("reply_to"), str) else None
        if head.get("type") == "exec" and msg_id:
            error = f"The sandbox could not run this cell: malformed exec message: {problem}"
            self.send_result(msg_id[:64], CellResult(stdout="", stderr="", error=error))
            return
        if head.get("type") == "subcall_reply" and reply_to:
            failed = SubcallResult(ok=False, text=f"Error: malformed sub-call reply ({problem})")
            if self.subcalls.deliver(reply_to, [failed] * 1000):
                return
        with self._notes_lock:
            if len(self._protocol_notes) < MAX_PROTOCOL_NOTES:
                self._protocol_notes.append(f"{problem}: {text[:80]!r}")

    def keep_forever(self) -> None:
        """Publish again what the host has not acknowledged; heartbeat; watch the parent."""
        failures = 0
        next_heartbeat = time.monotonic() + self.boot.heartbeat_s
        while True:
            if not self._host_alive_after_tick():
                log("the parent process is gone; exiting")
                os._exit(EXIT_PARENT_LOST)
            try:
                self.outbox.resend_due()
                if time.monotonic() >= next_heartbeat:
                    next_heartbeat = time.monotonic() + self.boot.heartbeat_s
                    self.send(self.heartbeat())
                failures = 0
            except resp.RedisError as exc:
                failures += 1
                if failures >= MAX_HEARTBEAT_FAILURES:
                    log(f"Redis unreachable ({exc}); exiting")
                    os._exit(EXIT_REDIS_LOST)

    def _host_alive_after_tick(self) -> bool:
        """Wait one tick, watching the lifeline (no thread of its own: a sandbox's threads
        count against its process limit); False once the host is gone."""
        if self._lifeline is None:
            time.sleep(KEEPER_TICK_S)
        else:
            try:
                readable, _, _ = select.select([self._lifeline], [], [], KEEPER_TICK_S)
                if readable and not os.read(self._lifeline, 4096):
                    return False  # end of file: the host's end closed
            except (OSError, ValueError):
                return False  # closed under us (by model code): nobody vouches for the host
        return os.getppid() == self._parent

    # ---- main loop -----------------------------------------------------------------------

    def serve(self, repl: Repl) -> int:
        """Run messages in order until shutdown; returns the exit code."""
        while True:
            msg = self._inbox.get()
            if isinstance(msg, wire.Shutdown):
                log("shutdown")
                return 0
            if isinstance(msg, wire.LoadContext):
                try:
                    context, size = self.load_context(msg.context_key)
                except (resp.RedisError, LookupError, ValueError, MemoryError) as exc:
                    log(f"cannot load the context: {exc!r}")
                    self.send_fatal(f"could not load the context: {exc!r}")
                    return EXIT_FATAL
                repl.set_context(context, msg.context_index)
                repl.set_tools(make_tools(self.subcalls, msg.tools))
                del context
                determinism.seed_random(msg.seed)
                self.send(
                    wire.ContextLoaded(
                        seq=self.next_seq(), id=wire.new_id(), reply_to=msg.id, size_bytes=size
                    )
                )
                continue
            self._busy = True
            try:
                result = repl.run(
                    msg.code, timeout_s=msg.timeout_s, max_output_chars=msg.max_output_chars
                )
            finally:
                self._busy = False
            notes = self._take_protocol_notes()
            if notes:
                result = result.replace(stderr=result.stderr + notes)
            self.send_result(msg.id, result)

    def send_result(self, request_id: str, result: CellResult) -> None:
        """The cell's result; one too large for the wire is cut down and says why."""
        done = wire.CellDone(
            seq=self.next_seq(), id=wire.new_id(), reply_to=request_id, result=result
        )
        try:
            self.send(done)
        except wire.WireError as exc:
            error = (
                f"The cell ran, but its result could not be sent back ({exc}). Its final "
                "answer, answer['content'] or error was too large: keep them smaller."
            )
            cut = CellResult(
                stdout=result.stdout[:LARGE_RESULT_KEEP_CHARS],
                stderr=result.stderr[:LARGE_RESULT_KEEP_CHARS],
                error=error,
                timed_out=result.timed_out,
                duration_s=result.duration_s,
            )
            self.send(done.replace(result=cut))

    def _take_protocol_notes(self) -> str:
        with self._notes_lock:
            notes, self._protocol_notes = self._protocol_notes, []
        if not notes:
            return ""
        lines = "\n".join(f"  - {n}" for n in notes)
        return f"\n[sandbox] ignored malformed messages on its input channel:\n{lines}"


def _json_head(raw: bytes | str) -> dict[str, Any]:
    try:
        head = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return head if isinstance(head, dict) else {}


def read_bootstrap() -> wire.Bootstrap:
    line = sys.stdin.buffer.readline(MAX_BOOTSTRAP_BYTES)
    return wire.Bootstrap.from_json(line)


def main() -> int:
    try:
        boot = read_bootstrap()
    except (wire.WireError, OSError) as exc:
        log(f"bad bootstrap on stdin: {exc}")
        return EXIT_BAD_BOOTSTRAP
    lifeline = os.dup(0) if boot.stdin_lifeline else None
    sys.stdin.close()
    sys.stdin = open(os.devnull)  # noqa: SIM115 - model code's input() gets EOF for good
    os.dup2(sys.stdin.fileno(), 0)  # and so does anything reading descriptor 0
    if not determinism.hash_seed_fixed():
        log("PYTHONHASHSEED is not fixed: hash() and set order will differ in a replay")
    context: Any = None
    try:
        client = retrying("connecting", lambda: connect(boot), boot.reconnect_s, os.getppid())
        runtime = Runtime(boot, client, lifeline)
        sub = runtime.subscribe()
        # Before anything is published: acknowledgements must find their way back.
        threading.Thread(target=runtime.read_forever, args=(sub,), daemon=True).start()
        threading.Thread(target=runtime.keep_forever, daemon=True).start()
        if boot.context_key is not None:
            context, _ = runtime.load_context(boot.context_key)
            determinism.seed_random(boot.seed)
    except resp.RedisError as exc:
        log(f"cannot start: {exc}")
        return EXIT_REDIS_LOST
    except (LookupError, ValueError, MemoryError) as exc:
        log(f"cannot load the context: {exc!r}")
        runtime.send_fatal(f"could not load the context: {exc!r}")
        return EXIT_FATAL
    repl = Repl(
        context,
        make_functions(runtime.subcalls),
        busy=resp.main_thread_in_request,
        context_index=boot.context_index,
    )
    repl.set_tools(make_tools(runtime.subcalls, boot.tools))
    del context
    runtime.send(wire.Ready(seq=runtime.next_seq(), id=wire.new_id(), pid=os.getpid()))
    return runtime.serve(repl)


if __name__ == "__main__":
    sys.exit(main())
