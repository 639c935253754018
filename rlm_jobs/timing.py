"""The fixed intervals of the host side, with why each is what it is.

What a deployment tunes is a setting (``rlm_jobs.config.Settings``: lease and claim TTLs,
heartbeats, timeouts, ``redis_retry_s``). What is here is fixed because it only sets how
quickly something is noticed, and each value was picked against the others it meets: a
wait that looks at a flag every quarter second, a check that resends what a dead worker
held every second, a backoff that meets a restarted Redis within a second. The sandbox
runtime keeps its own copy of the reconnect backoff (it imports nothing from rlm_jobs),
checked equal by a test.
"""

from __future__ import annotations

# ---- Redis outages ----------------------------------------------------------------------

# Pauses between tries to reach a Redis that went away, doubling from the first to the cap:
# a restart on its AOF takes about a second, so the first tries come quickly and the later
# ones at most a second apart (our clients, kombu's message bookkeeping, sandbox runtimes).
REDIS_RETRY_FIRST_S = 0.05
REDIS_RETRY_CAP_S = 1.0

# ---- stopping -----------------------------------------------------------------------------

# How often a running job's waits look at its cancel flag, deadline and budget: cancelling
# should feel immediate, and one MGET for every running job four times a second is cheap.
STOP_CHECK_S = 0.25
# How long releasing a lease waits for a renewal in flight (a Redis outage, at worst).
LEASE_RELEASE_WAIT_S = 5.0
# How long the reply collector's BLPOP blocks before it looks for a stop request.
REPLY_POLL_S = 1.0
# How long a stopping orchestrator lets its reaper finish the sweep under way (a requeue cut
# off between its claim and its send would leave the job to wait out the claim); short,
# since a sweep riding out a Redis outage must not hold a shutdown up.
REAPER_STOP_WAIT_S = 3.0

# ---- lost work ----------------------------------------------------------------------------

# How often a waiting batch looks at the calls it waits for (claims lapsed, replies lost):
# a dead llm worker's calls go out again within this plus their claim's TTL.
CALL_CHECK_S = 1.0
# A call nobody has taken this long while the llm queue is empty is sent again: its message
# was lost, or it sits in the prefetch of a worker that died before claiming it. Longer than
# any wait in a queue that is empty, so a busy pool is never sent duplicates.
UNCLAIMED_RESEND_S = 10.0
# A heartbeat saying the runtime lacks the request the host waits on is believed only this
# long after the request was last sent (one sent before the request arrived proves
# nothing), and heeded at most this often (model code can send heartbeats too).
SANDBOX_RESEND_AFTER_S = 1.0
# How often the sandbox ACL users are compared with Redis's while sandboxes live (one
# ACL USERS): well inside the time a runtime retries its login (redis_retry_s).
ACL_USERS_CHECK_S = 1.0

# ---- sandboxes ----------------------------------------------------------------------------

# How often a host waiting on a sandbox checks that its runtime still lives: a dead one is
# replaced within half a second, and a check costs one waitpid or one container inspect.
SANDBOX_LIVENESS_CHECK_S = 0.5
# A runtime asked to shut down gets this long before it is killed.
SANDBOX_SHUTDOWN_WAIT_S = 1.0
# A runtime that ignores its own cell interrupt gets this long past the cell's timeout
# before it is killed and replaced.
SANDBOX_HARD_DEADLINE_GRACE_S = 5.0
