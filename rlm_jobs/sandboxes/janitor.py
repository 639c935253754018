"""Everything that cleans up after sandboxes, off the job's path.

- **Teardown queue.** Ending a sandbox (ask it to stop, wait briefly, kill, delete its ACL
  user and keys, unsubscribe) is mostly waiting. ``SandboxSession.close()`` hands it to a
  few worker threads and returns at once. ``drain()`` waits for every queued teardown; pools
  call it when they close, and ``close()`` (``SandboxServices.close``, also run at exit)
  drains before it stops the threads, so a teardown that was queued always completes.
- **Liveness keys.** Every live sandbox of this process has ``keys.sandbox_alive(id)`` with a
  short TTL, refreshed by one thread. The key is written *before* the ACL user is created and
  lives outside the sandbox's own key space, so the sandbox cannot keep it alive.
- **Stale-user sweep.** A crashed orchestrator leaves ACL users behind; ``sweep_stale_users``
  deletes every ``rlm-sbx-*`` user whose liveness key has expired (pools run it at start,
  orchestrators' reapers every ``sandbox_sweep_interval_s``).

Key deletion scans only the sandbox's own prefix (``SCAN MATCH``), in the background. Only
the host writes keys there (the sandbox's ACL user has no write command), every one with a
TTL (``keys.SANDBOX_KEY_TTL_S``), so the scan only speeds up reclaiming memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import redis

from rlm_jobs import keys
from rlm_jobs.errors import SandboxError
from rlm_jobs.sandboxes import acl
from rlm_jobs.sandboxes.identities import Identities

log = logging.getLogger(__name__)

# Teardowns running at once: each mostly waits (on a process, the Docker API, Redis).
TEARDOWN_THREADS = 4
# A liveness key outlives this many missed refreshes, then marks its user as stale.
ALIVE_REFRESHES_PER_TTL = 4
# How long close() waits for queued teardowns; each step has its own timeout.
CLOSE_DRAIN_S = 60.0

Task = Callable[[], None]


class Janitor:
    def __init__(self, client: redis.Redis, identities: Identities) -> None:
        self._client = client
        self._identities = identities
        self._tasks: queue.Queue[Task | None] = queue.Queue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        # Held around the liveness keys' Redis I/O (taken before ``_lock`` when both are),
        # so a refresh cannot write a key again after ``mark_gone`` deleted it, while
        # ``drain`` and ``close`` never wait behind a command riding out an outage.
        self._io_lock = threading.Lock()
        self._pending = 0
        self._workers: list[threading.Thread] = []
        self._alive: set[str] = set()
        # The shortest liveness TTL asked for (every sandbox of a process has the same).
        self._alive_ttl_s = float("inf")
        self._wake_keeper = threading.Event()
        self._keeper: threading.Thread | None = None
        self._closed = False

    # ---- teardown ------------------------------------------------------------------------

    def submit(self, task: Task) -> None:
        """Run ``task`` on a teardown thread; it must catch and log its own errors.

        After ``close`` the task runs at once on the caller's thread: nothing is left behind.
        """
        with self._lock:
            closed = self._closed
            if not closed:
                self._pending += 1
            if (
                not closed
                and len(self._workers) < TEARDOWN_THREADS
                and self._pending > len(self._workers)
            ):
                worker = threading.Thread(target=self._work, name="rlm-teardown", daemon=True)
                self._workers.append(worker)
                worker.start()
        if closed:
            _run_logged(task)
        else:
            self._tasks.put(task)

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted teardown has finished; False if time ran out."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._idle:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout_s: float = CLOSE_DRAIN_S) -> None:
        """Finish the queued teardowns, then stop every thread; safe to call twice."""
        if not self.drain(timeout_s):
            log.error("%d sandbox teardowns did not finish in %.0f s", self.pending, timeout_s)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers, self._workers = self._workers, []
            keeper = self._keeper
        for _ in workers:
            self._tasks.put(None)
        self._wake_keeper.set()
        # A thread stuck on Redis (daemon) is not waited for long when asked not to wait.
        join_s = 5.0 if timeout_s > 0 else 0.5
        for thread in [*workers, *([keeper] if keeper is not None else [])]:
            thread.join(timeout=join_s)

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:  # close(): every queued teardown before it has run
                return
            try:
                _run_logged(task)
            finally:
                with self._idle:
                    self._pending -= 1
                    if not self._pending:
                        self._idle.notify_all()

    # ---- liveness ------------------------------------------------------------------------

    def mark_alive(self, sandbox_id: str, ttl_s: float) -> None:
        """Call before creating the sandbox's ACL user (so a sweep never sees it unmarked).

        The key lives ``ttl_s`` unless refreshed; this process refreshes it every quarter of
        that until ``mark_gone``.
        """
        try:
            self._client.set(keys.sandbox_alive(sandbox_id), "1", px=max(1, int(ttl_s * 1000)))
        except redis.RedisError as exc:
            raise SandboxError(f"could not mark sandbox {sandbox_id} alive: {exc}") from exc
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox janitor is closed: no new sandbox may start")
            self._alive.add(sandbox_id)
            if ttl_s < self._alive_ttl_s:
                self._alive_ttl_s = ttl_s
                self._wake_keeper.set()  # it may be sleeping for a longer TTL's interval
            if self._keeper is None:
                self._keeper = threading.Thread(
                    target=self._keep_alive, name="rlm-sandbox-alive", daemon=True
                )
                self._keeper.start()

    def mark_gone(self, sandbox_id: str) -> None:
        """Call after the ACL user is deleted."""
        with self._io_lock:
            with self._lock:
                self._alive.discard(sandbox_id)
            self._client.delete(keys.sandbox_alive(sandbox_id))

    def _keep_alive(self) -> None:
        while True:
            self._wake_keeper.wait(self._alive_ttl_s / ALIVE_REFRESHES_PER_TTL)
            self._wake_keeper.clear()
            try:
                with self._io_lock:
                    with self._lock:
                        if self._closed:
                            return
                        alive = list(self._alive)
                        ttl_ms = max(1, int(self._alive_ttl_s * 1000))
                    if not alive:
                        continue
                    pipe = self._client.pipeline(transaction=False)
                    for sandbox_id in alive:
                        pipe.set(keys.sandbox_alive(sandbox_id), "1", px=ttl_ms)
                    pipe.execute()
            except redis.RedisError as exc:
                log.warning("could not refresh sandbox liveness keys: %s", exc)

    def sweep_stale_users(self) -> list[str]:
        """Delete sandbox ACL users whose owner stopped refreshing their liveness key."""
        users = [u.decode() if isinstance(u, bytes) else str(u) for u in self._client.acl_users()]
        candidates = [u for u in users if u.startswith(keys.SANDBOX_USER_PREFIX)]
        if not candidates:
            return []
        ids = [u[len(keys.SANDBOX_USER_PREFIX) :] for u in candidates]
        pipe = self._client.pipeline(transaction=False)
        for sandbox_id in ids:
            pipe.exists(keys.sandbox_alive(sandbox_id))
        alive = pipe.execute()
        stale = [user for user, present in zip(candidates, alive, strict=True) if not present]
        if not stale:
            return []
        # Keys first, the user last: a sweeper that dies in between leaves a stale user,
        # which the next sweep finds and finishes (the reverse would leave keys nobody
        # looks for). Only hosts write there, and this one's host is dead.
        swept = []
        for user in stale:
            sandbox_id = user[len(keys.SANDBOX_USER_PREFIX) :]
            try:
                acl.delete_keys(self._client, sandbox_id)
            except SandboxError as exc:  # its user stays: the next sweep tries again
                log.warning("could not delete dead sandbox %s's keys: %s", sandbox_id, exc)
                continue
            self._identities.forget(sandbox_id)
            swept.append(user)
        if swept:
            # ACL DELUSER also disconnects any client still logged in as that user.
            self._client.acl_deluser(*swept)
            log.warning("removed %d sandbox ACL users left by dead orchestrators", len(swept))
        return swept


def _run_logged(task: Task) -> None:
    try:
        task()
    except Exception:
        log.exception("a sandbox teardown failed")
