"""Claims on running sub-calls: how the cluster knows an llm worker is still at it.

An llm worker claims each call of a chunk before running it (``CallStore.take``); one
``ClaimKeeper`` thread per process renews every claim it holds every third of
``llm_claim_ttl_s``, in one script. A worker that dies stops renewing, its claims lapse,
and the orchestrator waiting for those calls sends them again (``workers/dispatcher.py``).
"""

from __future__ import annotations

import logging
import threading

from rlm_jobs.calls import CallStore

log = logging.getLogger(__name__)


class ClaimKeeper:
    def __init__(self, calls: CallStore, *, ttl_s: float) -> None:
        self._calls = calls
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._claims: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, claims: dict[str, str]) -> None:
        """Keep these claims (call id -> token) alive until ``release``."""
        with self._lock:
            self._claims.update(claims)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="rlm-claim-keeper", daemon=True
                )
                self._thread.start()

    def release(self, call_id: str) -> None:
        with self._lock:
            self._claims.pop(call_id, None)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            with self._lock:
                claims = dict(self._claims)
            if not claims:
                continue
            try:
                taken = self._calls.renew_claims(claims, self.ttl_s)
            except Exception:  # a Redis hiccup: the TTL covers a short one
                log.exception("could not renew sub-call claims")
                continue
            if taken:
                log.warning(
                    "%d sub-call claims lapsed and were taken by another worker "
                    "(this process stalled); those calls may be answered twice",
                    len(taken),
                )
