"""Everything that cleans up after sandboxes, off the job's path.

- **Teardown queue.** Ending a sandbox (ask it to stop, wait briefly, kill, delete its ACL
  user and keys, unsubscribe) takes 0.2-1 s, mostly waiting. ``SandboxSession.close()`` hands
  it to a few worker threads and returns at once. ``drain()`` waits for every queued teardown;
  pools call it when they close, and ``atexit`` calls it as a last resort, so a teardown that
  was queued always completes while the process lives.
- **Liveness keys.** Every live sandbox of this process has ``keys.sandbox_alive(id)`` with a
  short TTL, refreshed by one thread. The key is written *before* the ACL user is created and
  lives outside the sandbox's own key space, so the sandbox cannot keep it alive.
- **Stale-user sweep.** A crashed orchestrator leaves ACL users behind; ``sweep_stale_users``
  deletes every ``rlm-sbx-*`` user whose liveness key has expired (pools run it at start).

Key deletion scans only the sandbox's own prefix (``SCAN MATCH``), in the background. Every
key the runtime and host write carries a TTL (``wire.MESSAGE_TTL_S``), so the scan only
speeds up reclaiming memory and catches keys hostile code wrote without a TTL; Redis's
``maxmemory`` (with a ``volatile-*`` eviction policy) is what bounds a sandbox that writes
much, TTL or not.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable

import redis

from rlm_jobs import keys
from rlm_jobs.errors import SandboxError
from rlm_jobs.sandboxes import acl
from rlm_jobs.sandboxes.identities import identities_for
from rlm_jobs.sandboxes.per_pool import PerPool

log = logging.getLogger(__name__)

# Teardowns running at once: each mostly waits (on a process, the Docker API, Redis).
TEARDOWN_THREADS = 4
# A liveness key outlives this many missed refreshes, then marks its user as stale.
ALIVE_REFRESHES_PER_TTL = 4
# Longest a process waits at exit for queued teardowns; each step has its own timeout.
DRAIN_AT_EXIT_S = 60.0

Task = Callable[[], None]


class Janitor:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._tasks: queue.Queue[Task] = queue.Queue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._workers: list[threading.Thread] = []
        self._alive: set[str] = set()
        # The shortest liveness TTL asked for (every sandbox of a process has the same).
        self._alive_ttl_s = float("inf")
        self._wake_keeper = threading.Event()
        self._keeper: threading.Thread | None = None

    # ---- teardown ------------------------------------------------------------------------

    def submit(self, task: Task) -> None:
        """Run ``task`` on a teardown thread; it must catch and log its own errors."""
        with self._lock:
            self._pending += 1
            if len(self._workers) < TEARDOWN_THREADS and self._pending > len(self._workers):
                worker = threading.Thread(target=self._work, name="rlm-teardown", daemon=True)
                self._workers.append(worker)
                worker.start()
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

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            try:
                task()
            except Exception:
                log.exception("a sandbox teardown failed")
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
        with self._lock:
            self._alive.discard(sandbox_id)
            # Under the lock: a refresh cannot write the key again after this delete.
            self._client.delete(keys.sandbox_alive(sandbox_id))

    def _keep_alive(self) -> None:
        while True:
            self._wake_keeper.wait(self._alive_ttl_s / ALIVE_REFRESHES_PER_TTL)
            self._wake_keeper.clear()
            try:
                with self._lock:
                    if not self._alive:
                        continue
                    ttl_ms = max(1, int(self._alive_ttl_s * 1000))
                    pipe = self._client.pipeline(transaction=False)
                    for sandbox_id in self._alive:
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
        if stale:
            identities = identities_for(self._client)
            for user in stale:
                identities.forget(user[len(keys.SANDBOX_USER_PREFIX) :])
            # ACL DELUSER also disconnects any client still logged in as that user.
            self._client.acl_deluser(*stale)
            log.warning("removed %d sandbox ACL users left by dead orchestrators", len(stale))
            for user in stale:
                # Wire copies expire by themselves; keys hostile code wrote without a TTL
                # would not.
                sandbox_id = user[len(keys.SANDBOX_USER_PREFIX) :]
                try:
                    acl.delete_keys(self._client, sandbox_id)
                except SandboxError as exc:
                    log.warning("could not delete dead sandbox %s's keys: %s", sandbox_id, exc)
        return stale


_janitors: PerPool[Janitor] = PerPool(Janitor)
_janitors_started = threading.Event()


def janitor_for(client: redis.Redis) -> Janitor:
    """The process-wide janitor for the Redis server behind ``client``'s connection pool."""
    if not _janitors_started.is_set():
        _janitors_started.set()
        atexit.register(drain_all)  # queued teardowns finish before the process exits
    return _janitors.get(client)


def drain_all(timeout_s: float = DRAIN_AT_EXIT_S) -> None:
    """Finish every queued teardown of this process (registered with ``atexit``)."""
    janitors = _janitors.all()
    deadline = time.monotonic() + timeout_s
    for janitor in janitors:
        if not janitor.drain(max(0.0, deadline - time.monotonic())):
            log.error("%d sandbox teardowns did not finish before exit", janitor.pending)
