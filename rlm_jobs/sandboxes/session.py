"""The host side of the sandbox wire: a ``Repl`` backed by a runtime in a sandbox.

One ``SandboxSession`` owns one sandbox at a time: its ACL user, its channel on the shared
hub, its process (started, waited on and ended by ``lifecycle.Launcher``). With a
``SandboxPool`` it takes a pre-started sandbox and has it load the job's context; otherwise,
or when the pool is empty, it starts one. While a cell runs, sub-call requests are answered
from a thread pool so several can be in flight and the channel keeps being read. A cell that
outlives its timeout plus a grace period, or a runtime that dies, costs the sandbox: it is
killed and a fresh one (new id, new ACL user, context reloaded, variables gone) takes its
place, and the result says so. ``close()`` returns at once; the sandbox is ended in the
background (``rlm_jobs.sandboxes.janitor``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rlm_jobs import keys, timing
from rlm_jobs.errors import SandboxDied, SandboxError, SandboxTimeout
from rlm_jobs.models import ContextRef
from rlm_jobs.sandboxes import acl
from rlm_jobs.sandboxes.base import (
    Repl,
    ReplFactory,
    SandboxBackend,
    SandboxProcess,
    SubcallHandler,
    ToolHandler,
)
from rlm_jobs.sandboxes.lifecycle import Launcher, LiveSandbox
from rlm_jobs.sandboxes.pool import SandboxPool
from rlm_jobs.sandboxes.services import SandboxServices
from sandbox import wire
from sandbox.records import CellResult, SubcallResult, ToolSpec

log = logging.getLogger(__name__)

# Sub-call requests of one sandbox served at once; a batch is one request.
SUBCALL_THREADS = 16

REPLACED_NOTE = (
    "The sandbox was replaced by a fresh one. `context`, llm_query, rlm_query, SHOW_VARS, "
    "FINAL, FINAL_VAR and `answer` are available again, but every variable, import and "
    "function defined in earlier cells is gone: recompute what you still need."
)


class SandboxSession:
    """A live REPL in a sandbox; use as a context manager or call ``close()``."""

    def __init__(
        self,
        services: SandboxServices,
        backend: SandboxBackend,
        context: ContextRef,
        handler: SubcallHandler,
        *,
        pool: SandboxPool | None = None,
        seed: int = 0,
        tools: ToolHandler | None = None,
        grace_s: float = timing.SANDBOX_HARD_DEADLINE_GRACE_S,
        heartbeat_s: float = 5.0,
    ) -> None:
        self._services = services
        self._client = services.client
        self._settings = services.settings
        # The latest context (``load_context``) and its index: what a replacement loads.
        self._context = context
        self._context_index = 0
        self._handler = handler
        self._tools = tools
        # random.seed() of every sandbox of this session, replacements included.
        self.seed = seed
        self._launcher = Launcher(services, backend, heartbeat_s=heartbeat_s)
        # A pooled sandbox heartbeats at the pool's rate; a session asking for another
        # rate (tests do) starts its own.
        usable = pool is not None and pool.backend is backend and pool.heartbeat_s == heartbeat_s
        self._sandbox_pool = pool if usable else None
        self.grace_s = grace_s
        self._closed = False
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(SUBCALL_THREADS, thread_name_prefix="rlm-subcall")
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

    def run_cell(self, code: str, *, timeout_s: float, max_output_chars: int) -> CellResult:
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
        notes: list[str] = []

        on_other = self._requests_served(sbx, notes)
        try:
            done = self._launcher.await_message(
                sbx,
                lambda m: isinstance(m, wire.CellDone) and m.reply_to == request.id,
                timeout_s=timeout_s + self.grace_s,
                what="the cell ignored its interrupt",
                on_other=on_other,
                stop=self._stop_reason,
                request=request,
            )
        except SandboxTimeout:
            return self._replace_after_timeout(sbx, timeout_s, started)
        except SandboxDied:
            return self._replace_after_death(sbx, started)
        assert isinstance(done, wire.CellDone)
        notes[:0] = sbx.channel.take_problems()
        if sbx.exited:  # it answered, then died: keep the answer
            self._replace(sbx)
            return _result(done, [*notes, REPLACED_NOTE], replaced=True)
        return _result(done, notes)

    def load_context(self, context: ContextRef, *, index: int, seed: int) -> None:
        """Give the live sandbox another context, keeping its variables (a session's next
        question): bound as ``context`` and ``context_<index>``, ``random`` seeded with
        ``seed``. A replacement sandbox later starts from this one."""
        sbx = self._sbx
        if self._closed or sbx is None:
            raise SandboxError("the sandbox session is closed or has no live sandbox")
        self._context, self._context_index, self.seed = context, index, seed
        self._load(sbx, keys.context_blob(context.sha256))

    def close(self) -> None:
        """End the session at once; safe to call twice.

        The sandbox is shut down and everything it had removed on the janitor's threads
        (see ``rlm_jobs.sandboxes.janitor``): that is mostly waiting, which the job does
        not need to pay. ``Janitor.drain()`` waits for it.
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

    def _stop_reason(self) -> str | None:
        return "the sandbox session was closed while a cell was running" if self._closed else None

    def _start(self) -> LiveSandbox:
        if self._closed:
            raise SandboxError("the sandbox session is closed")
        started = time.monotonic()
        context_key = keys.context_blob(self._context.sha256)
        sbx = self._from_pool(context_key)
        self.from_pool = sbx is not None
        if sbx is None:
            sbx = self._launcher.start(
                context_key, seed=self.seed, context_index=self._context_index, tools=self._specs
            )
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
            self._load(sbx, context_key)
        except SandboxError as exc:
            # A fresh start reports a real problem (a missing context) in the usual words.
            log.warning("pooled sandbox %s unusable (%s); starting a fresh one", sbx.id, exc)
            self._launcher.teardown_later(sbx)
            return None
        return sbx

    def _requests_served(self, sbx: LiveSandbox, notes: list[str]) -> Callable[[wire.ToHost], None]:
        """What a wait does with the sandbox's other messages: its sub-call and tool
        requests are served (model code may ask from its own threads at any time), a fatal
        error is noted. A request ignored here would never be served: its repeats carry
        the same id."""

        def on_other(msg: wire.ToHost) -> None:
            if isinstance(msg, wire.SubcallRequest):
                self._pool.submit(self._serve_subcall, sbx, msg)
            elif isinstance(msg, wire.ToolRequest):
                self._pool.submit(self._serve_tool, sbx, msg)
            elif isinstance(msg, wire.Fatal):
                notes.append(f"[host] the sandbox reported a fatal error: {msg.message}")

        return on_other

    @property
    def _specs(self) -> list[ToolSpec]:
        return [] if self._tools is None else list(self._tools.specs)

    def _load(self, sbx: LiveSandbox, context_key: str) -> None:
        """Have the sandbox load ``context_key`` (its user may read it from now on)."""
        # Only now, and only for this sandbox, does this context become readable.
        acl.grant_context(self._client, self._services.identities, sbx.id, context_key)
        request = wire.LoadContext(
            seq=sbx.next_seq(),
            id=wire.new_id(),
            context_key=context_key,
            seed=self.seed,
            context_index=self._context_index,
            tools=self._specs,
        )
        self._launcher.send_request(sbx, request)
        loaded = self._launcher.await_message(
            sbx,
            lambda m: (
                isinstance(m, wire.Fatal)
                or (isinstance(m, wire.ContextLoaded) and m.reply_to == request.id)
            ),
            timeout_s=self._settings.sandbox_start_timeout_s,
            what="the sandbox did not load its context in time (sandbox_start_timeout_s)",
            on_other=self._requests_served(sbx, []),
            request=request,
        )
        self._launcher.raise_if_fatal(sbx, loaded)

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
    ) -> CellResult:
        if sbx.process is not None:
            sbx.process.kill()
        error = (
            f"TimeoutError: the cell did not stop within its {timeout_s:g} s limit plus a "
            f"{self.grace_s:g} s grace period (it ignored the interrupt), so its sandbox was "
            "killed."
        )
        self._replace(sbx)
        return CellResult(
            stdout="",
            stderr="",
            error=error,
            timed_out=True,
            sandbox_replaced=True,
            note=REPLACED_NOTE,
            duration_s=time.monotonic() - started,
        )

    def _replace_after_death(self, sbx: LiveSandbox, started: float) -> CellResult:
        how = sbx.describe()
        error = (
            f"The sandbox process died while running this cell ({how}). Typical causes: "
            "running out of memory, too many processes, or calling os._exit/kill on itself."
        )
        self._replace(sbx)
        return CellResult(
            stdout="",
            stderr="",
            error=error,
            sandbox_replaced=True,
            note=REPLACED_NOTE,
            duration_s=time.monotonic() - started,
        )

    # ---- sub-calls -----------------------------------------------------------------------

    def _serve_subcall(self, sbx: LiveSandbox, request: wire.SubcallRequest) -> None:
        n = len(request.prompts)
        try:
            # The sandbox gets ok and text only: usage and worker names stay on the host.
            results = [SubcallResult(ok=r.ok, text=r.text) for r in self._handler(request)[:n]]
            missing = n - len(results)
            results += [SubcallResult(ok=False, text="Error: no answer for this prompt")] * missing
        except Exception as exc:
            log.exception("sub-call handler failed for sandbox %s", sbx.id)
            text = f"Error: the sub-call failed: {type(exc).__name__}: {exc}"
            results = [SubcallResult(ok=False, text=text)] * n
        if self._sbx is not sbx:
            return  # the sandbox that asked is gone; its keys must not be recreated
        reply = wire.SubcallReply(
            seq=sbx.next_seq(), id=wire.new_id(), reply_to=request.id, results=results
        )
        try:
            self._launcher.send(sbx, reply)
        except SandboxError as exc:
            log.warning("%s", exc)

    def _serve_tool(self, sbx: LiveSandbox, request: wire.ToolRequest) -> None:
        if self._tools is None:
            result = SubcallResult(ok=False, text="this REPL has no tools")
        else:
            try:
                answer = self._tools(request)
                result = SubcallResult(ok=answer.ok, text=answer.text)
            except Exception as exc:
                log.exception("tool handler failed for sandbox %s", sbx.id)
                result = SubcallResult(
                    ok=False, text=f"{request.name}: the host failed: {type(exc).__name__}"
                )
        if self._sbx is not sbx:
            return  # the sandbox that asked is gone; its keys must not be recreated
        reply = wire.SubcallReply(
            seq=sbx.next_seq(), id=wire.new_id(), reply_to=request.id, results=[result]
        )
        try:
            self._launcher.send(sbx, reply)
        except SandboxError as exc:
            log.warning("%s", exc)


def _result(done: wire.CellDone, notes: list[str], *, replaced: bool = False) -> CellResult:
    # Host-only facts come from the host, whatever the sandbox put in them.
    return done.result.replace(sandbox_replaced=replaced, note="\n".join(notes))


def open_repl_factory(
    services: SandboxServices,
    backend: SandboxBackend | None = None,
    *,
    pool: SandboxPool | None = None,
) -> ReplFactory:
    """What the loop calls to get a REPL: one ``SandboxSession`` per call, same backend.

    With a ``pool``, sessions take pre-started sandboxes from it (and use its backend).
    ``seed`` seeds ``random`` in the sandbox (``sandbox.determinism``); 0 unless given.
    """
    from rlm_jobs.sandboxes.registry import create_backend

    chosen = pool.backend if pool is not None else backend or create_backend(services.settings)

    def open_repl(
        context: ContextRef,
        handler: SubcallHandler,
        *,
        seed: int = 0,
        tools: ToolHandler | None = None,
    ) -> Repl:
        return SandboxSession(services, chosen, context, handler, pool=pool, seed=seed, tools=tools)

    return open_repl
