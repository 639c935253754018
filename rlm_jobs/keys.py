"""Every Redis key and channel name rlm-jobs uses, with its type and lifetime.

Nothing else in the code base spells a key. Sandboxes receive their names in their
bootstrap message and never derive any.
"""

from __future__ import annotations

PREFIX = "rlm"

# How long finished-job data stays: a week lets users fetch results after a weekend.
RESULT_TTL_S = 7 * 24 * 3600
# Sandbox replies and blobs only matter while the cell that asked is waiting.
SANDBOX_KEY_TTL_S = 3600


def context_blob(sha256: str) -> str:
    """STRING: a context serialised as JSON, content-addressed; TTL renewed on each submit."""
    return f"{PREFIX}:ctx:{sha256}"


def job(job_id: str) -> str:
    """HASH: the job record (spec, status, result, attempts, timestamps; see store.py)."""
    return f"{PREFIX}:job:{job_id}"


def root_job_id(job_id: str) -> str:
    """Child RLM jobs are named ``<parent id>.<n>``; the root id is the first segment."""
    return job_id.split(".", 1)[0]


def running_jobs() -> str:
    """ZSET: ids of jobs marked running (score: start time); scanned for expired leases."""
    return f"{PREFIX}:running"


def job_requeue_claim(job_id: str, attempt: int) -> str:
    """STRING with TTL: set by the one worker that requeues a dead attempt."""
    return f"{PREFIX}:job:{job_id}:requeue:{attempt}"


def job_children(job_id: str) -> str:
    """SET: ids of child RLM jobs started by this job."""
    return f"{PREFIX}:job:{job_id}:children"


def job_trajectory(job_id: str) -> str:
    """LIST: trajectory events of this job as JSON, in order."""
    return f"{PREFIX}:job:{job_id}:traj"


def job_lease(job_id: str) -> str:
    """STRING with TTL: the worker currently running the job; expiry means it died."""
    return f"{PREFIX}:job:{job_id}:lease"


def job_cancel(job_id: str) -> str:
    """STRING: present when the job was asked to stop; lives as long as the record."""
    return f"{PREFIX}:job:{job_id}:cancel"


def job_progress(job_id: str) -> str:
    """HASH: live counters (iteration, sub-calls, tokens, cost) for watchers."""
    return f"{PREFIX}:job:{job_id}:progress"


def batch(batch_id: str) -> str:
    """STRING: the batch record (query, model, created_at) as JSON."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_jobs(batch_id: str) -> str:
    """HASH: document id -> job id, for idempotent resubmission."""
    return f"{PREFIX}:batch:{batch_id}:jobs"


def subcall_prompt(call_id: str) -> str:
    """STRING: a sub-call's prompt, so task messages carry only its id; short TTL."""
    return f"{PREFIX}:call:{call_id}:prompt"


def subcall_replies(waiter_id: str) -> str:
    """LIST: replies to sub-calls for one waiting orchestrator process, pushed by llm workers."""
    return f"{PREFIX}:replies:{waiter_id}"


def sandbox_prefix(sandbox_id: str) -> str:
    """The namespace a sandbox's ACL user may touch (channels and keys)."""
    return f"{PREFIX}:sbx:{sandbox_id}:"


def sandbox_to_sandbox(sandbox_id: str) -> str:
    """CHANNEL: orchestrator -> sandbox (exec, sub-call replies, shutdown)."""
    return f"{sandbox_prefix(sandbox_id)}in"


def sandbox_to_host(sandbox_id: str) -> str:
    """CHANNEL: sandbox -> orchestrator (ready, cell results, sub-call requests, heartbeats)."""
    return f"{sandbox_prefix(sandbox_id)}out"


def sandbox_message(sandbox_id: str, message_id: str) -> str:
    """STRING with TTL: a copy of every wire message, for a side that missed the publish."""
    return f"{sandbox_prefix(sandbox_id)}msg:{message_id}"


def sandbox_alive(sandbox_id: str) -> str:
    """STRING with a short TTL, refreshed by the process that owns the sandbox.

    Outside ``sandbox_prefix`` on purpose: the sandbox must not be able to keep it alive.
    Its absence marks the sandbox's ACL user as left behind by a dead orchestrator.
    """
    return f"{PREFIX}:sbx-alive:{sandbox_id}"


def sandbox_user(sandbox_id: str) -> str:
    """ACL user name of a sandbox; deleted when the sandbox ends."""
    return f"{SANDBOX_USER_PREFIX}{sandbox_id}"


# Every sandbox's ACL user name starts with this; the stale-user sweep looks for it.
SANDBOX_USER_PREFIX = "rlm-sbx-"


# Celery's Redis transport (kombu) keeps a queue's messages at priorities 3, 6 and 9 in
# lists named ``<queue>\x06\x16<priority>``, beside the list of the queue's own name.
BROKER_PRIORITY_SEP = "\x06\x16"
BROKER_PRIORITY_STEPS = (3, 6, 9)


def broker_queue_lists(queue: str) -> tuple[str, ...]:
    """LISTs (the broker's, not ours; they live while messages wait): one queue's messages
    at each priority step. Read only, for its depth."""
    return (queue, *(f"{queue}{BROKER_PRIORITY_SEP}{p}" for p in BROKER_PRIORITY_STEPS))
