"""A few sandboxes started ahead of demand, so a job does not wait for a start.

Each pooled sandbox is an ordinary sandbox (own id, own ACL user, own channels and keys)
started *without* a context: its user can read no context at all. ``take()`` hands one to
exactly one session, which grants its user read access to that job's context blob and sends
``LoadContext`` (``SandboxSession._from_pool``). A sandbox never comes back: the session
ends it as usual, so no state can cross from one job to the next.

One refill thread keeps ``size`` sandboxes idle or starting: it launches without waiting
(so several starts overlap, but never more than the pool is short of, and each only with a
start slot no job is waiting for: ``start_slots.StartSlots``), watches for ``Ready``, and
discards sandboxes that died, failed to start or sat idle longer than ``max_idle_s`` (old
ones are replaced so a pool does not hold a stale process for hours).
When the pool is empty, ``take()`` hands out one that is still starting (the session waits
for its ``Ready``: never longer than a fresh start) or None, and the session starts its own.

``close()`` stops the thread and ends every pooled sandbox synchronously, then waits for the
janitor's queued teardowns; it runs at exit too. At start the thread sweeps ACL users left
behind by dead orchestrators (``Janitor.sweep_stale_users``).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque

import redis

from rlm_jobs.errors import RLMJobsError, SandboxError
from rlm_jobs.sandboxes.base import SandboxBackend
from rlm_jobs.sandboxes.lifecycle import Launcher, LiveSandbox
from rlm_jobs.sandboxes.services import SandboxServices
from sandbox import wire

log = logging.getLogger(__name__)

# An idle sandbox older than this is replaced: bounds how long a process sits unused.
DEFAULT_MAX_IDLE_S = 600.0
# How often idle sandboxes are checked for death and age.
IDLE_CHECK_S = 1.0
# How often starting sandboxes are checked for Ready.
STARTING_POLL_S = 0.02
# After a failed start (the launch raised, or the sandbox failed, exited or timed out before
# Ready) the thread waits this long, doubling up to the cap, so a missing or stale image or
# a full host does not turn into a busy loop.
RETRY_BASE_S = 0.5
RETRY_MAX_S = 30.0
# close() waits this long for the refill thread (a launch in progress must finish first).
CLOSE_JOIN_S = 60.0


class SandboxPool:
    def __init__(
        self,
        services: SandboxServices,
        backend: SandboxBackend,
        *,
        size: int | None = None,
        max_idle_s: float = DEFAULT_MAX_IDLE_S,
        heartbeat_s: float = 5.0,
    ) -> None:
        self.services = services
        self.backend = backend
        self.size = services.settings.sandbox_pool_size if size is None else size
        self.max_idle_s = max_idle_s
        self.heartbeat_s = heartbeat_s
        self._launcher = Launcher(services, backend, heartbeat_s=heartbeat_s)
        self._start_timeout_s = services.settings.sandbox_start_timeout_s
        self._cond = threading.Condition()
        self._idle: deque[LiveSandbox] = deque()
        self._starting: list[LiveSandbox] = []
        self._closed = False
        # Failed starts in a row, and when the next start may go (the backoff above).
        self._failures = 0
        self._retry_at = 0.0
        self.started = 0  # sandboxes launched by the pool, for tests and metrics
        self._thread: threading.Thread | None = None
        if self.size > 0:
            self._thread = threading.Thread(target=self._run, name="rlm-sandbox-pool", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    # ---- public --------------------------------------------------------------------------

    def take(self) -> LiveSandbox | None:
        """A sandbox for one job (ready, or still starting), or None if there is none."""
        with self._cond:
            if self._closed:
                return None
            while self._idle:
                sbx = self._idle.popleft()
                if sbx.process is not None and sbx.process.alive():
                    self._cond.notify_all()
                    return sbx
                self._discard(sbx, "died while idle")
            if self._starting:
                sbx = self._starting.pop(0)  # the oldest: closest to ready
                self._cond.notify_all()
                return sbx
            return None

    @property
    def idle(self) -> list[LiveSandbox]:
        with self._cond:
            return list(self._idle)

    def wait_full(self, timeout_s: float) -> bool:
        """Wait until ``size`` sandboxes are idle and ready (tests, warm-up)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._idle) < self.size:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        """End every pooled sandbox and wait for queued teardowns; safe to call twice."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            victims = [*self._idle, *self._starting]
            self._idle.clear()
            self._starting.clear()
            self._cond.notify_all()
        atexit.unregister(self.close)
        if self._thread is not None and self._thread is not threading.current_thread():
            # With Redis lost, a refill stuck on it ends with the process (a daemon thread).
            self._thread.join(0.5 if self.services.redis_lost else CLOSE_JOIN_S)
        for sbx in victims:
            # Synchronously: this may run at exit, when new threads cannot start.
            self._launcher.teardown(sbx.id, sbx)
        # Queued teardowns ride out a Redis outage; with Redis lost, the process's own end
        # stops their sandboxes instead (services.redis_lost says how).
        self.services.janitor.drain(0.0 if self.services.redis_lost else CLOSE_JOIN_S)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the refill thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.services.janitor.sweep_stale_users()
        except (redis.RedisError, RLMJobsError) as exc:
            log.warning("could not sweep stale sandbox ACL users: %s", exc)
        next_idle_check = 0.0
        while True:
            with self._cond:
                if self._closed:
                    return
                self._check_starting()
                now = time.monotonic()
                if now >= next_idle_check:
                    next_idle_check = now + IDLE_CHECK_S
                    self._check_idle(now)
                short = self.size - len(self._idle) - len(self._starting)
                if short <= 0:
                    self._cond.wait(STARTING_POLL_S if self._starting else IDLE_CHECK_S)
                    continue
                if now < self._retry_at:
                    wait_s = self._retry_at - now
                    self._cond.wait(min(wait_s, STARTING_POLL_S) if self._starting else wait_s)
                    continue
                # Never blocks: this thread must keep freeing the slots of its own starts.
                slot = self.services.start_slots.try_acquire()
                if slot is None:
                    self._cond.wait(STARTING_POLL_S)
                    continue
            try:
                sbx = self._launcher.launch(None, slot)
            except Exception as exc:
                with self._cond:
                    self._start_failed(f"could not pre-start a sandbox ({exc})")
                continue
            with self._cond:
                self.started += 1
                if not self._closed:
                    self._starting.append(sbx)
                    continue
            self._launcher.teardown(sbx.id, sbx)
            return

    def _check_starting(self) -> None:
        """Called with the lock held: move sandboxes that said Ready to the idle list."""
        now = time.monotonic()
        for sbx in list(self._starting):
            problem = None
            try:
                msg = self._launcher.poll(sbx, lambda m: isinstance(m, (wire.Ready, wire.Fatal)))
                if isinstance(msg, wire.Ready):
                    sbx.ready = True
                elif isinstance(msg, wire.Fatal):
                    problem = f"failed to start: {msg.message}"
            except SandboxError as exc:  # the hub lost its connection for good
                problem = f"lost its channel: {exc}"
            if problem is None and not sbx.ready:
                if now - sbx.launched_at > self._start_timeout_s:
                    problem = "was not ready in time"
                elif sbx.process is not None and not sbx.process.alive():
                    problem = "exited before it was ready"
            if problem is not None:
                sbx.end_start()
                self._starting.remove(sbx)
                self._discard(sbx, problem)
                self._start_failed(f"pooled sandbox {sbx.id} {problem}")
            elif sbx.ready:
                sbx.end_start()
                self._starting.remove(sbx)
                self._idle.append(sbx)
                self._failures = 0
                self._cond.notify_all()

    def _start_failed(self, what: str) -> None:
        """Called with the lock held: the next start waits, longer after each failure."""
        self._failures += 1
        delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay
        log.warning("%s; next start in %.1f s", what, delay)

    def _check_idle(self, now: float) -> None:
        """Called with the lock held: drop idle sandboxes that died or grew old."""
        for sbx in list(self._idle):
            if now - sbx.launched_at > self.max_idle_s:
                problem = "was idle too long"
            elif sbx.process is None or not sbx.process.alive():
                problem = "died while idle"
            else:
                continue
            self._idle.remove(sbx)
            self._discard(sbx, problem)

    def _discard(self, sbx: LiveSandbox, why: str) -> None:
        log.info("pooled sandbox %s %s; replacing it", sbx.id, why)
        self._launcher.teardown_later(sbx)
