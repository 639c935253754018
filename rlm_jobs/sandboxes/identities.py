"""The ACL users of this process's live sandboxes, told again to a Redis that forgot them.

ACL users are not data: Redis keeps them in memory (or an ACL file), never in its
append-only file, so a Redis restarted on its AOF has every key of a running job and none
of its sandboxes' users. The runtimes then cannot log in again and their jobs would lose
their REPL state. So every user ``acl`` creates is remembered here with its rules (the
password only as the SHA-256 Redis itself keeps), and one thread per process compares them
with ``ACL USERS`` every ``timing.ACL_USERS_CHECK_S`` while any sandbox lives, creating
again the missing ones whose sandbox still has its liveness key (kept in the AOF). A
runtime retries its login for ``redis_retry_s``, far longer than that.

A user deleted on purpose (teardown, the stale-user sweep) is forgotten *before* it is
deleted, under the same lock the check holds, so a check can never bring it back.
"""

from __future__ import annotations

import logging
import threading

import redis

from rlm_jobs import keys, timing

log = logging.getLogger(__name__)


class Identities:
    """Remembered rules by sandbox id; a user is restored only while its sandbox's liveness
    key (``keys.sandbox_alive``) exists, the same test the stale-user sweep applies."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._rules: dict[str, list[str]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def sandbox_ids(self) -> list[str]:
        with self._lock:
            return list(self._rules)

    def remember(self, sandbox_id: str, rules: list[str]) -> None:
        """Call after ``ACL SETUSER`` made the sandbox's user with ``rules``."""
        with self._lock:
            self._rules[sandbox_id] = list(rules)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="rlm-acl-restore", daemon=True
                )
                self._thread.start()

    def add_rule(self, sandbox_id: str, rule: str) -> list[str] | None:
        """Add ``rule`` (a context granted later); the user's rules now, if remembered."""
        with self._lock:
            rules = self._rules.get(sandbox_id)
            if rules is None:
                return None
            rules.append(rule)
            return list(rules)

    def forget(self, sandbox_id: str) -> None:
        """Call before deleting the user: from now on no check creates it again."""
        with self._lock:
            self._rules.pop(sandbox_id, None)

    def restore(self) -> list[str]:
        """Create again the users of live sandboxes Redis does not know; their sandbox ids."""
        with self._lock:
            if not self._rules:
                return []
            listed = self._client.acl_users()
            known = {u.decode() if isinstance(u, bytes) else str(u) for u in listed}
            missing = [i for i in self._rules if keys.sandbox_user(i) not in known]
            if not missing:
                return []
            pipe = self._client.pipeline(transaction=False)
            for sandbox_id in missing:
                pipe.exists(keys.sandbox_alive(sandbox_id))
            alive = [i for i, live in zip(missing, pipe.execute(), strict=True) if live]
            pipe = self._client.pipeline(transaction=False)
            for sandbox_id in alive:
                user = keys.sandbox_user(sandbox_id)
                pipe.execute_command("ACL", "SETUSER", user, *self._rules[sandbox_id])  # type: ignore[no-untyped-call]
            pipe.execute()
        if alive:
            log.warning(
                "Redis had forgotten %d sandbox ACL users (it restarted?): created them again",
                len(alive),
            )
        return alive

    def close(self) -> None:
        """Stop checking (the process's sandboxes are gone)."""
        self._stop.set()
        # Read without the lock: a check riding out a Redis outage holds it that long.
        thread = self._thread
        if thread is not None:
            thread.join(timeout=timing.ACL_USERS_CHECK_S + 5)

    def _run(self) -> None:
        while not self._stop.wait(timing.ACL_USERS_CHECK_S):
            try:
                self.restore()
            except redis.RedisError as exc:  # Redis still away: the next check tries again
                log.warning("could not check the sandbox ACL users: %s", exc)
