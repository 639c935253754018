"""What every sandbox of a process shares, built once by its owner and passed in.

The owner (an orchestrator's ``WorkerRuntime``, library mode's ``RLM``, a test) makes one
``SandboxServices`` for its Redis client and settings and hands it to every
``SandboxPool``, ``SandboxSession`` and ``open_repl_factory``, as it hands an ``Engine`` to
the loop: one pub/sub connection and reader thread for every sandbox's out-channel
(``hub``), one teardown queue and liveness keeper (``janitor``), one start limit
(``start_slots``), and the record of its sandboxes' ACL users that a restarted Redis is
told again (``identities``). ``close()`` finishes queued teardowns and stops those threads; it also
runs at exit, so a teardown that was queued completes while the process lives.
"""

from __future__ import annotations

import atexit
import logging

import redis

from rlm_jobs.config import Settings
from rlm_jobs.sandboxes import acl
from rlm_jobs.sandboxes.hub import PubSubHub
from rlm_jobs.sandboxes.identities import Identities
from rlm_jobs.sandboxes.janitor import CLOSE_DRAIN_S, Janitor
from rlm_jobs.sandboxes.start_slots import StartSlots

log = logging.getLogger(__name__)


class SandboxServices:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.hub = PubSubHub(client)
        self.identities = Identities(client)
        self.janitor = Janitor(client, self.identities)
        self.start_slots = StartSlots(settings.sandbox_start_concurrency)
        # Set by an owner that is ending while Redis does not answer: teardowns then only
        # stop their sandboxes, and closing does not wait for those queued before (each
        # Redis step would wait out the outage): their sandboxes end with the process
        # (bwrap --die-with-parent) or, in Docker, are removed by live orchestrators'
        # sweep. What the teardowns would have removed from Redis does not outlive them for
        # long: a restarted Redis has lost the ACL users (the owner told them again), live
        # orchestrators sweep those whose liveness key expired, with their keys, and the
        # wire's copies expire.
        self.redis_lost = False
        self._closed = False
        _warn_if_default_user_open(client)
        atexit.register(self.close)

    def close(self) -> None:
        """Finish queued teardowns, then stop the janitor's and the hub's threads."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self.janitor.close(0.0 if self.redis_lost else CLOSE_DRAIN_S)
        self.identities.close()
        self.hub.close()

    def __enter__(self) -> SandboxServices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _warn_if_default_user_open(client: redis.Redis) -> None:
    if acl.default_user_is_open(client):
        log.warning(
            "SANDBOX ACL BYPASS: Redis's default user needs no password, so model code can "
            "connect through the sandbox's socket as 'default' and read or change every key. "
            "Give it a password (requirepass, or ACL SETUSER default >...) or switch it off."
        )
