"""The host side of the sandbox wire: a ``Repl`` backed by a runtime in a sandbox.

One ``SandboxSession`` owns one sandbox at a time: its ACL user, its subscription on the
shared hub, its process (started and ended by ``lifecycle.Launcher``). With a
``SandboxPool`` it takes a pre-started sandbox and has it load the job's context; otherwise,
or when the pool is empty, it starts one. While a cell runs, sub-call requests are answered
from a thread pool so several can be in flight and the channel keeps being read. A cell that
outlives its timeout plus a grace period, or a runtime that dies, costs the sandbox: it is
killed and a fresh one (new id, new ACL user, context reloaded, variables gone) takes its
place, and the outcome says so. ``close()`` returns at once; the sandbox is ended in the
background (``rlm_jobs.sandboxes.janitor``).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis

from rlm_jobs import keys
from rlm_jobs.config import Settings
from rlm_jobs.errors import SandboxError
from rlm_jobs.models import ContextRef
from rlm_jobs.sandboxes import acl
from rlm_jobs.sandboxes.base import (
    CellOutcome,
    Repl,
    ReplFactory,
    SandboxBackend,
    SandboxProcess,
    SubcallHandler,
)
from rlm_jobs.sandboxes.hub import PubSubHub
from rlm_jobs.sandboxes.janitor import Janitor
from rlm_jobs.sandboxes.lifecycle import Launcher, LiveSandbox
from rlm_jobs.sandboxes.pool import SandboxPool
from sandbox import wire

log = logging.getLogger(__name__)

# A runtime that ignores its own interrupt gets this long before it is killed.
HARD_DEADLINE_GRACE_S = 5.0
# How often a waiting host checks that the runtime is still alive.
LIVENESS_CHECK_S = 0.5
# How often a waiting host reads the stored copy of the result, in case pub/sub lost it.
STORED_REPLY_POLL_S = 1.0
# Sub-call requests of one sandbox served at once; a batch is one request.
SUBCALL_THREADS = 16

_checked_default_user: set[int] = set()

REPLACED_NOTE = (
    "The sandbox was replaced by a fresh one. `context`, llm_query, rlm_query, SHOW_VARS, "
    "FINAL, FINAL_VAR and `answer` are available again, but every variable, import and "
    "function defined in earlier cells is gone: recompute what you still need."
)


class SandboxSession:
    """A live REPL in a sandbox; use as a context manager or call ``close()``."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        backend: SandboxBackend,
        context: ContextRef,
        handler: SubcallHandler,
        *,
        hub: PubSubHub | None = None,
        janitor: Janitor | None = None,
        pool: SandboxPool | None = None,
        grace_s: float = HARD_DEADLINE_GRACE_S,
        heartbeat_s: float = 5.0,
    ) -> None:
        self._client = client
        self._settings = settings
        self._context = context
        self._handler = handler
        self._launcher = Launcher(
            client, settings, backend, hub=hub, janitor=janitor, heartbeat_s=heartbeat_s
        )
        # A pooled sandbox heartbeats at the pool's rate; a session asking for another
        # rate (tests do) starts its own.
        usable = pool is not None and pool.backend is backend and pool.heartbeat_s == heartbeat_s
        self._sandbox_pool = pool if usable else None
        self.grace_s = grace_s
        self._closed = False
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(SUBCALL_THREADS, thread_name_prefix="rlm-subcall")
        _warn_if_default_user_open(client)
        self.start_duration_s = 0.0
        # Whether the current sandbox came ready-made from the pool.
        self.from_pool = False
        self._sbx: LiveSandbox | None = None
        try:
            self._sbx = self._start()
        except BaseException:
            self._pool.shutdown(wait=False, cancel_futures=True)
            raise

    # ---- public --------------------------------------------------------------------------

    @property
    def sandbox_id(self) -> str | None:
        sbx = self._sbx
        return None if sbx is None else sbx.id

    @property
    def process(self) -> SandboxProcess | None:
        sbx = self._sbx
        return None if sbx is None else sbx.process

    def run_cell(self, code: str, *, timeout_s: float, max_output_chars: int) -> CellOutcome:
        sbx = self._sbx
        if self._closed or sbx is None:
            raise SandboxError("the sandbox session is closed or has no live sandbox")
        request = wire.ExecCell(
            seq=sbx.next_seq(),
            id=wire.new_id(),
            code=code,
            timeout_s=timeout_s,
            max_output_chars=max(100, max_output_chars),
        )
        started = time.monotonic()
        self._launcher.send_request(sbx, request)
        deadline = started + timeout_s + self.grace_s
        next_liveness = started + LIVENESS_CHECK_S
        next_poll = started + STORED_REPLY_POLL_S
        notes: list[str] = []
        while True:
            if self._closed:
                raise SandboxError("the sandbox session was closed while a cell was running")
            now = time.monotonic()
            if now >= deadline:
                return self._replace_after_timeout(sbx, timeout_s, started)
            raw = self._receive(sbx, min(0.25, deadline - now))
            if raw is not None:
                result = self._handle(sbx, raw, request, notes)
                if result is not None:
                    return _outcome(result, notes)
            now = time.monotonic()
            if now >= next_liveness:
                next_liveness = now + LIVENESS_CHECK_S
                if sbx.process is not None and not sbx.process.alive():
                    stored = self._stored_result(sbx, request.id)
                    if stored is not None:  # it answered, then died: keep the answer
                        self._replace(sbx)
                        return _outcome(stored, [*notes, REPLACED_NOTE], replaced=True)
                    return self._replace_after_death(sbx, started)
            if now >= next_poll:
                next_poll = now + STORED_REPLY_POLL_S
                stored = self._stored_result(sbx, request.id)
                if stored is not None:
                    return _outcome(stored, notes)

    def close(self) -> None:
        """End the session at once; safe to call twice.

        The sandbox is shut down and everything it had removed on the janitor's threads
        (see ``rlm_jobs.sandboxes.janitor``): that takes 0.2-1 s of waiting which the job
        does not need to pay. ``Janitor.drain()`` waits for it.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sbx, self._sbx = self._sbx, None
        try:
            if sbx is not None:
                self._launcher.teardown_later(sbx)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> SandboxSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- lifecycle -----------------------------------------------------------------------

    def _start(self) -> LiveSandbox:
        if self._closed:
            raise SandboxError("the sandbox session is closed")
        started = time.monotonic()
        context_key = keys.context_blob(self._context.sha256)
        sbx = self._from_pool(context_key)
        self.from_pool = sbx is not None
        if sbx is None:
            sbx = self._launcher.start(context_key)
        self.start_duration_s = time.monotonic() - started
        log.debug("sandbox %s ready in %.3f s", sbx.id, self.start_duration_s)
        return sbx

    def _from_pool(self, context_key: str) -> LiveSandbox | None:
        """A pooled sandbox given this job's context, or None (then start one as usual)."""
        if self._sandbox_pool is None:
            return None
        sbx = self._sandbox_pool.take()
        if sbx is None:
            return None
        try:
            self._launcher.await_ready(sbx)
            # Only now, and only for this sandbox, does any context become readable.
            acl.grant_context(self._client, sbx.id, context_key)
            request = wire.LoadContext(
                seq=sbx.next_seq(), id=wire.new_id(), context_key=context_key
            )
            self._launcher.send_request(sbx, request)
            self._launcher.await_message(
                sbx,
                lambda m: isinstance(m, wire.ContextLoaded) and m.reply_to == request.id,
                request,
                self._settings.sandbox_start_timeout_s,
                "the pooled sandbox did not load its context in time (sandbox_start_timeout_s)",
            )
        except SandboxError as exc:
            # A fresh start reports a real problem (a missing context) in the usual words.
            log.warning("pooled sandbox %s unusable (%s); starting a fresh one", sbx.id, exc)
            self._launcher.teardown_later(sbx)
            return None
        return sbx

    def _replace(self, sbx: LiveSandbox) -> None:
        with self._lock:
            if self._sbx is sbx:
                self._sbx = None
        self._launcher.teardown(sbx.id, sbx)
        fresh = self._start()
        with self._lock:
            if self._closed:
                self._launcher.teardown(fresh.id, fresh)
                raise SandboxError("the sandbox session was closed while replacing its sandbox")
            self._sbx = fresh

    def _replace_after_timeout(
        self, sbx: LiveSandbox, timeout_s: float, started: float
    ) -> CellOutcome:
        if sbx.process is not None:
            sbx.process.kill()
        error = (
            f"TimeoutError: the cell did not stop within its {timeout_s:g} s limit plus a "
            f"{self.grace_s:g} s grace period (it ignored the interrupt), so its sandbox was "
            "killed."
        )
        self._replace(sbx)
        return CellOutcome(
            stdout="",
            stderr="",
            error=error,
            timed_out=True,
            sandbox_replaced=True,
            note=REPLACED_NOTE,
            duration_s=time.monotonic() - started,
        )

    def _replace_after_death(self, sbx: LiveSandbox, started: float) -> CellOutcome:
        how = sbx.describe()
        error = (
            f"The sandbox process died while running this cell ({how}). Typical causes: "
            "running out of memory, too many processes, or calling os._exit/kill on itself."
        )
        self._replace(sbx)
        return CellOutcome(
            stdout="",
            stderr="",
            error=error,
            sandbox_replaced=True,
            note=REPLACED_NOTE,
            duration_s=time.monotonic() - started,
        )

    # ---- messages ------------------------------------------------------------------------

    def _send(self, sbx: LiveSandbox, msg: wire.Message) -> None:
        self._launcher.send(sbx, msg)

    def _receive(self, sbx: LiveSandbox, timeout_s: float) -> str | bytes | None:
        try:
            return sbx.sub.get(timeout_s)
        except SandboxError as exc:
            # The hub lost its connection; resubscribe and rely on stored copies meanwhile.
            log.warning("sandbox %s: %s; resubscribing", sbx.id, exc)
            sbx.sub = self._launcher.hub.subscribe(keys.sandbox_to_host(sbx.id))
            return None

    def _stored_result(self, sbx: LiveSandbox, request_id: str) -> wire.CellResult | None:
        try:
            stored = wire.fetch_reply_to_host(self._client, sbx.prefix, request_id)
        except (wire.WireError, redis.RedisError) as exc:
            log.warning("sandbox %s: unreadable stored result: %s", sbx.id, exc)
            return None
        return stored if isinstance(stored, wire.CellResult) else None

    def _handle(
        self,
        sbx: LiveSandbox,
        raw: str | bytes,
        request: wire.ExecCell,
        notes: list[str],
    ) -> wire.CellResult | None:
        try:
            msg = wire.decode_to_host(self._client, sbx.prefix, raw)
        except (wire.WireError, redis.RedisError) as exc:
            log.warning("sandbox %s sent a malformed message: %s", sbx.id, exc)
            if len(notes) < 5:
                notes.append(f"[host] ignored a malformed message from the sandbox: {exc}")
            return None
        if isinstance(msg, wire.CellResult):
            return msg if msg.reply_to == request.id else None
        if isinstance(msg, wire.Heartbeat):
            self._launcher.resend_if_lost(sbx, request, msg)
        elif isinstance(msg, wire.SubcallRequest) and msg.id not in sbx.requests_seen:
            sbx.requests_seen.add(msg.id)
            self._pool.submit(self._serve_subcall, sbx, msg)
        elif isinstance(msg, wire.Fatal):
            notes.append(f"[host] the sandbox reported a fatal error: {msg.message}")
        return None

    def _serve_subcall(self, sbx: LiveSandbox, request: wire.SubcallRequest) -> None:
        n = len(request.prompts)
        try:
            outcomes = self._handler(request)
            slots = [wire.Slot(ok=o.ok, text=o.text) for o in outcomes[:n]]
            missing = n - len(slots)
            slots += [wire.Slot(ok=False, text="Error: no answer for this prompt")] * missing
        except Exception as exc:
            log.exception("sub-call handler failed for sandbox %s", sbx.id)
            text = f"Error: the sub-call failed: {type(exc).__name__}: {exc}"
            slots = [wire.Slot(ok=False, text=text)] * n
        if self._sbx is not sbx:
            return  # the sandbox that asked is gone; its keys must not be recreated
        reply = wire.SubcallReply(
            seq=sbx.next_seq(), id=wire.new_id(), reply_to=request.id, results=slots
        )
        try:
            self._send(sbx, reply)
        except SandboxError as exc:
            log.warning("%s", exc)


def _outcome(result: wire.CellResult, notes: list[str], *, replaced: bool = False) -> CellOutcome:
    return CellOutcome(
        stdout=result.stdout,
        stderr=result.stderr,
        error=result.error,
        final=result.final,
        partial=result.partial,
        timed_out=result.timed_out,
        sandbox_replaced=replaced,
        note="\n".join(notes),
        duration_s=result.duration_s,
    )


def _warn_if_default_user_open(client: redis.Redis) -> None:
    pool_id = id(client.connection_pool)
    if pool_id in _checked_default_user:
        return
    _checked_default_user.add(pool_id)
    if acl.default_user_is_open(client):
        log.warning(
            "SANDBOX ACL BYPASS: Redis's default user needs no password, so model code can "
            "connect through the sandbox's socket as 'default' and read or change every key. "
            "Give it a password (requirepass, or ACL SETUSER default >...) or switch it off."
        )


def open_repl_factory(
    client: redis.Redis,
    settings: Settings,
    backend: SandboxBackend | None = None,
    *,
    pool: SandboxPool | None = None,
) -> ReplFactory:
    """What the loop calls to get a REPL: one ``SandboxSession`` per call, same backend.

    With a ``pool``, sessions take pre-started sandboxes from it (and use its backend).
    """
    from rlm_jobs.sandboxes.registry import create_backend

    chosen = pool.backend if pool is not None else backend or create_backend(settings)

    def open_repl(context: ContextRef, handler: SubcallHandler) -> Repl:
        return SandboxSession(client, settings, chosen, context, handler, pool=pool)

    return open_repl
