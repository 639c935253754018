"""Sandbox liveness keys against a real Redis: refreshed while the sandbox lives, gone after."""

from __future__ import annotations

import redis

from rlm_jobs import keys
from rlm_jobs.sandboxes.identities import Identities
from rlm_jobs.sandboxes.janitor import Janitor
from tests.support import wait_for


def test_a_liveness_key_is_refreshed_well_within_its_ttl_and_deleted_when_gone(
    redis_client: redis.Redis,
) -> None:
    janitor = Janitor(redis_client, Identities(redis_client))
    key = keys.sandbox_alive("refreshme")
    janitor.mark_alive("refreshme", 2.0)
    assert 1500 < redis_client.pttl(key) <= 2000

    # Refreshed every quarter of the TTL: the remaining life keeps jumping back up, and
    # the key outlives its first TTL several times over.
    last = [redis_client.pttl(key)]
    jumps = []

    def refreshed_six_times() -> bool:
        pttl = redis_client.pttl(key)
        assert pttl > 0, "the liveness key expired while its sandbox lived"
        if pttl > last[0]:
            jumps.append(pttl)
        last[0] = pttl
        return len(jumps) >= 6

    wait_for(refreshed_six_times, 10, "six refreshes")

    janitor.mark_gone("refreshme")
    assert not redis_client.exists(key)


def test_the_shortest_ttl_sets_the_refresh_pace(redis_client: redis.Redis) -> None:
    janitor = Janitor(redis_client, Identities(redis_client))
    janitor.mark_alive("slow", 600.0)  # the keeper now sleeps 150 s between refreshes
    janitor.mark_alive("fast", 2.0)  # wakes it: both keys are refreshed every 0.5 s
    fast, slow = keys.sandbox_alive("fast"), keys.sandbox_alive("slow")

    wait_for(lambda: redis_client.pttl(slow) <= 2000, 5, "the slow key refreshed at 2 s")
    first = redis_client.pttl(fast)
    wait_for(lambda: redis_client.pttl(fast) > first, 5, "the fast key refreshed")
    assert redis_client.pttl(fast) > 0
    janitor.mark_gone("fast")
    janitor.mark_gone("slow")
