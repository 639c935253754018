"""Every Redis key and channel name rlm-jobs uses, with its type and lifetime.

Nothing else in the host's code spells a key. Sandboxes receive their names in their
bootstrap message; the stdlib runtime keeps a copy of the two it derives from its message
prefix (``sandbox.wire.message_key``/``reply_key``), and a test keeps the copies equal.
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


def batch_budget(batch_id: str) -> str:
    """HASH: a batch's caps (max_cost_usd, max_tokens) and its spend (cost_usd, tokens,
    exhausted_at), updated by every call of its jobs; lives as long as the batch record."""
    return f"{PREFIX}:batch:{batch_id}:budget"


def session(session_id: str) -> str:
    """HASH: a session (status open/ended, created_at, last_used_at, busy: its unfinished
    job, ended_at, reason); expires session_idle_ttl_s after its last job finished (held
    while a job runs), or RESULT_TTL_S after it was ended."""
    return f"{PREFIX}:session:{session_id}"


def session_jobs(session_id: str) -> str:
    """LIST: the session's job ids in the order they were asked; the session's lifetime."""
    return f"{PREFIX}:session:{session_id}:jobs"


def rate_limit(name: str) -> str:
    """HASH: GCRA state of one rate-limit entry (model or provider): the next free request
    slot and token time, in microseconds of Redis time; expires a minute after it is idle."""
    return f"{PREFIX}:rate:{name}"


def rate_starts(name: str) -> str:
    """ZSET: when calls of a rate-limit entry started in the last second (Redis time, µs);
    expires two seconds after the last start."""
    return f"{PREFIX}:rate:{name}:starts"


def rate_cooldown(name: str) -> str:
    """STRING with TTL: a 429's Retry-After for a rate-limit entry: until when (Redis time,
    microseconds) no call may start; expires when the cool-down ends."""
    return f"{PREFIX}:rate:{name}:cool"


def cache_entry(digest: str) -> str:
    """STRING with TTL (``cache_ttl_s``): a cached reply as JSON, keyed by the request's
    SHA-256; evicted oldest first past ``cache_max_bytes``."""
    return f"{PREFIX}:cache:{digest}"


def cache_index() -> str:
    """ZSET: digests of cached replies, scored by when they were stored (ms); the eviction
    order. Entries whose reply expired are dropped by later writes."""
    return f"{PREFIX}:cache:index"


def cache_sizes() -> str:
    """HASH: digest -> bytes of its cached reply, and ``total`` for all of them."""
    return f"{PREFIX}:cache:sizes"


def job_journal(job_id: str) -> str:
    """LIST: the job's journal, one JSON entry per root model reply and per sub-call request,
    in order (rlm_jobs/journal.py); a resumed job replays it. Lives as long as the record."""
    return f"{PREFIX}:job:{job_id}:journal"


def job_calls(job_id: str) -> str:
    """HASH: call id -> the result of one of the job's sub-calls (llm or child RLM), written
    once by whoever produced it; the journal's answers by position. As long as the record."""
    return f"{PREFIX}:job:{job_id}:calls"


def subcall(call_id: str) -> str:
    """HASH: a sub-call waiting for its answer (job, model, prompt, waiter, claimed, and the
    id of its background response once a worker has one), so task messages carry only its
    id; deleted when answered or given up, else SANDBOX_KEY_TTL_S."""
    return f"{PREFIX}:call:{call_id}"


def subcall_claim(call_id: str) -> str:
    """STRING with a short TTL: the llm worker running the call, kept alive while it runs;
    a lapsed claim means that worker died and the call is sent again."""
    return f"{PREFIX}:call:{call_id}:claim"


def subcall_replies(waiter_id: str) -> str:
    """LIST: replies to sub-calls for one waiting orchestrator process, pushed by llm workers;
    SANDBOX_KEY_TTL_S after the last push."""
    return f"{SUBCALL_REPLIES_PREFIX}{waiter_id}"


# Every reply list's name starts with this (the llm worker's completion script appends the
# waiter named in the call's record).
SUBCALL_REPLIES_PREFIX = f"{PREFIX}:replies:"


def sandbox_prefix(sandbox_id: str) -> str:
    """The namespace a sandbox's ACL user may touch (channels and keys)."""
    return f"{PREFIX}:sbx:{sandbox_id}:"


def sandbox_to_sandbox(sandbox_id: str) -> str:
    """CHANNEL: orchestrator -> sandbox (exec, sub-call replies, shutdown)."""
    return f"{sandbox_prefix(sandbox_id)}in"


def sandbox_to_host(sandbox_id: str) -> str:
    """CHANNEL: sandbox -> orchestrator (ready, cell results, sub-call requests, heartbeats)."""
    return f"{sandbox_prefix(sandbox_id)}out"


def sandbox_message_prefix(sandbox_id: str) -> str:
    """Where the host's copies of its messages to a sandbox live (the bootstrap names it)."""
    return f"{sandbox_prefix(sandbox_id)}msg:"


def sandbox_message(sandbox_id: str, message_id: str) -> str:
    """STRING with TTL: the host's copy of a message it sent to the sandbox."""
    return f"{sandbox_message_prefix(sandbox_id)}{message_id}"


def sandbox_reply(sandbox_id: str, request_id: str) -> str:
    """STRING with TTL: the host's reply to one of the sandbox's requests, by request id."""
    return f"{sandbox_message_prefix(sandbox_id)}reply:{request_id}"


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
