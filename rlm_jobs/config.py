"""Settings: the only reader of the environment.

Every variable takes the prefix ``RLM_JOBS_``; provider keys are also read from the
standard ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``. Nothing is read at import time:
call ``Settings()`` at the edge (CLI, worker start, ``RLM(...)``) and pass it down.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Literal

import redis
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.retry import Retry

from rlm_jobs import timing


class ModelPrice(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class RateLimit(BaseModel):
    """Requests and tokens per minute for one model or provider, shared by the cluster.

    Either may be left out; an entry with neither only turns on the cluster-wide
    cool-down after a 429 (see ``rlm_jobs.providers.ratelimit``).
    """

    model_config = ConfigDict(extra="forbid")

    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)


# "provider/name" or "provider": what a RATE_LIMITS entry may be keyed by.
_RATE_LIMIT_KEY = re.compile(r"^[a-z0-9_-]+(/\S+)?$")


# Public list prices (USD / 1M tokens) at the time of writing; override with RLM_JOBS_PRICES.
# The scripted provider is priced like a small real model so budgets can be exercised offline.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "openai/gpt-4o": ModelPrice(input_per_mtok=2.50, output_per_mtok=10.00),
    "openai/gpt-4o-mini": ModelPrice(input_per_mtok=0.15, output_per_mtok=0.60),
    "openai/gpt-4.1": ModelPrice(input_per_mtok=2.00, output_per_mtok=8.00),
    "openai/gpt-4.1-mini": ModelPrice(input_per_mtok=0.40, output_per_mtok=1.60),
    "openai/gpt-5": ModelPrice(input_per_mtok=1.25, output_per_mtok=10.00),
    "openai/gpt-5-mini": ModelPrice(input_per_mtok=0.25, output_per_mtok=2.00),
    "anthropic/claude-sonnet-4-5": ModelPrice(input_per_mtok=3.00, output_per_mtok=15.00),
    "anthropic/claude-haiku-4-5": ModelPrice(input_per_mtok=1.00, output_per_mtok=5.00),
    "anthropic/claude-opus-4-1": ModelPrice(input_per_mtok=15.00, output_per_mtok=75.00),
    "scripted/*": ModelPrice(input_per_mtok=1.00, output_per_mtok=2.00),
}


def _user_cache_dir() -> Path:
    """Where converted documents are cached: the XDG cache directory, as desktop tools do."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rlm-jobs" / "ingest"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RLM_JOBS_", extra="ignore", populate_by_name=True)

    # None: library mode and `rlm-jobs run` start a private redis-server instead.
    redis_url: str | None = None

    # Connections one process may open to Redis; past it callers wait instead of failing.
    # Pub/sub and blocking reads have their own. Every command is short (leases and cancel
    # flags go in one batch per process), so a handful serve hundreds of concurrent jobs
    # (measured in docs/benchmarks.md).
    redis_max_connections: int = Field(default=8, ge=4, le=10_000)
    # How long a Redis outage is ridden out: commands, connections, task sends and sandboxes
    # retry at least this long before an error reaches a job. A restart that loads its
    # append-only file takes seconds; a failover, tens of seconds.
    redis_retry_s: float = Field(default=60.0, ge=0, le=3600)

    # The root model; None picks one from whichever provider key is set (scripted if none).
    model: str | None = None
    # Sub-calls often go to a cheaper model; None uses the root model.
    sub_model: str | None = None

    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("RLM_JOBS_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("RLM_JOBS_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"),
    )
    # None: the SDK's default endpoint. Set for vLLM, OpenRouter or any compatible server.
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("RLM_JOBS_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    anthropic_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RLM_JOBS_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL"),
    )
    # Where the scripted provider listens when the model is "scripted/...".
    scripted_base_url: str | None = None

    # Long generations take a minute or two; past this the call is retried.
    request_timeout_s: float = Field(default=180.0, gt=0)
    # Which calls the service makes as background responses kept under their call's record
    # (OpenAI's Responses API; the scripted provider speaks it too), so an llm worker that
    # dies mid-call leaves the response to the worker that takes the call over instead of
    # paying for it again: "root" for the root model's calls (long, and the costly ones),
    # "all" for sub-calls too. Off by default: a compatible server (vLLM, OpenRouter) may
    # not have the Responses API, and Anthropic has no background mode (its calls go on
    # as ordinary ones).
    background_calls: Literal["none", "root", "all"] = "none"
    # A background response is polled this often at first, then every tenth of the time
    # waited so far (at most 5 s): a long generation costs few polls.
    background_poll_s: float = Field(default=0.25, gt=0, le=10)
    # Five tries ride out a typical rate-limit window without hiding an outage.
    max_retries: int = Field(default=5, ge=0, le=20)
    # Backoff doubles from the base up to the cap, with full jitter.
    retry_base_s: float = Field(default=0.5, ge=0)
    retry_max_s: float = Field(default=30.0, ge=0)
    # Completion cap per call; providers need one (Anthropic requires it).
    max_output_tokens: int = Field(default=4096, ge=1)
    # Merged over DEFAULT_PRICES; "provider/*" entries price a whole provider.
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    # Cluster-wide limits per "provider/name" (or per "provider", for its models without an
    # entry of their own); none by default: only the operator knows the account's limits.
    rate_limits: dict[str, RateLimit] = Field(default_factory=dict)
    # The shared response cache is opt-in: a cached answer is only right when the caller
    # wants the same answer again (reruns, retried batches), which a job or batch says.
    cache: bool = False
    # A week: long enough to rerun last week's batch for free, short enough to age out.
    cache_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    # Bytes of cached replies kept (oldest evicted first); our Redis never evicts on its
    # own (noeviction), and 256 MiB holds some 100,000 long replies.
    cache_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)

    # In-process dispatcher threads: sub-calls are I/O-bound, so many threads are cheap.
    subcall_concurrency: int = Field(default=32, ge=1, le=1024)
    # Child RLMs of one rlm_query_batched running at once: each holds a sandbox.
    child_concurrency: int = Field(default=4, ge=1, le=64)
    # Service: prompts of one llm_query_batched carried by one rlm.llm task at most. Celery
    # costs milliseconds of CPU per task, so big batches go in chunks; a chunk's prompts
    # still run concurrently on its worker (llm_worker_concurrency).
    llm_chunk_size: int = Field(default=10, ge=1, le=100)
    # Service: provider calls one llm worker process runs at once, over all its tasks.
    llm_worker_concurrency: int = Field(default=64, ge=1, le=1024)
    # Service: life of an llm worker's claim on a call it runs, renewed every third of it. A
    # worker that dies has its calls sent again this long (plus a second) later; shorter
    # risks a worker that stalls this long (swapping, a GC pause) losing its calls.
    llm_claim_ttl_s: float = Field(default=6.0, ge=1.0, le=600)

    sandbox_backend: Literal["process", "docker"] = "process"
    # Interpreter that runs the process sandbox; the one running rlm-jobs by default.
    sandbox_python: str = Field(default_factory=lambda: sys.executable)
    # A Unix socket of the Redis server that sandboxes use (they have no network).
    sandbox_redis_socket: str | None = None
    # Address space of one sandbox; 2 GiB holds a 100 MB context with room to work.
    sandbox_memory_mb: int = Field(default=2048, ge=64)
    # CPUs one sandbox may use: model code is single-threaded Python, one core is plenty.
    sandbox_cpus: float = Field(default=1.0, gt=0, le=64)
    # Processes one sandbox may run at once: enough for a subprocess, not a fork bomb.
    sandbox_max_processes: int = Field(default=64, ge=1)
    # Largest file a sandbox may write, and the size of its scratch directory.
    sandbox_scratch_mb: int = Field(default=256, ge=1)
    # Seconds a sandbox gets to connect, load its context and say ready.
    sandbox_start_timeout_s: float = Field(default=60.0, gt=0)
    # Sandboxes kept started per orchestrator process: hides the ~1 s start of the next
    # job or two while costing only two idle runtimes' memory; 0 starts each on demand.
    sandbox_pool_size: int = Field(default=2, ge=0, le=64)
    # Sandboxes one orchestrator process starts at the same time: a start is CPU-bound, so a
    # burst of jobs queues for a start slot rather than slowing every start down.
    sandbox_start_concurrency: int = Field(default=4, ge=1, le=256)
    # Process backend only: run without an isolation layer (namespaces, unprivileged uid).
    sandbox_allow_unsafe: bool = False
    docker_image: str = "rlm-jobs-sandbox:latest"

    # Broker redelivery of unacknowledged messages; leases, not this, detect dead workers,
    # so it only needs to outlast a worker restart.
    visibility_timeout_s: float = Field(default=3600.0, gt=0)
    # How often workers sweep for messages past the visibility timeout; None keeps kombu's
    # default (about every 100 s), which is plenty since leases find dead workers first.
    broker_restore_interval_s: int | None = Field(default=None, ge=1)
    # A running job's lease; renewed every lease_renew_s, so a dead worker is noticed
    # within lease_ttl_s and its job resumed by a live one.
    lease_ttl_s: float = Field(default=30.0, gt=0)
    lease_renew_s: float = Field(default=5.0, gt=0)
    # Runs of one job cut short by a dying worker before it is given up (a hand-over at a
    # warm shutdown does not count). Each run resumes from the journal, so they are cheap;
    # a job that kills its worker this often is the cause, not the victim.
    max_attempts: int = Field(default=5, ge=1)
    # How often each orchestrator worker looks for jobs whose lease expired.
    reaper_interval_s: float = Field(default=5.0, gt=0)
    # How often it removes dead workers' sandbox containers and stale sandbox ACL users:
    # listing containers costs a Docker API call, and leftovers only waste resources.
    sandbox_sweep_interval_s: float = Field(default=30.0, gt=0)
    # Life of a sandbox's liveness key, refreshed every quarter of it by its orchestrator:
    # a dead orchestrator's sandbox ACL users are swept this long (plus a sweep interval)
    # after it died. Four missed refreshes in a row would cut off a live sandbox.
    sandbox_alive_ttl_s: float = Field(default=30.0, ge=2, le=3600)
    # Flower progress events per job at most this often (iteration changes always report).
    progress_interval_s: float = Field(default=0.5, ge=0)

    # A module of tool functions the REPL may call, run on the orchestrator (its TOOLS
    # mapping, else its public functions); none by default: tools are code the operator
    # chooses to trust with the host.
    tools: str | None = None
    # A tool is a lookup or an API call: seconds. Past this the cell gets an error rather
    # than waiting with it; a tool may set its own (custom_tools {"timeout_s": ...}).
    tool_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # Tool calls running at once per process; a tool that ignores its timeout keeps its
    # slot until it returns, so this also bounds the threads hung tools can hold.
    tool_concurrency: int = Field(default=16, ge=1, le=1024)
    # JSON a tool call's arguments or result may be: a few values, not data; data belongs
    # in the context, where it is stored once instead of crossing the wire per call.
    tool_max_json_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # A session (rlm-jobs submit --session) ends this long after its last job finished:
    # a follow-up comes within a working day; later, its replay (every earlier job's cells
    # run again) is better paid for by a fresh session. At most the job records' week,
    # which the replay reads.
    session_idle_ttl_s: float = Field(default=24 * 3600.0, ge=1, le=7 * 24 * 3600)

    # Converted documents (PDF, DOCX, HTML, ... as text) by content hash, so a rerun over
    # the same files does not convert them again.
    ingest_cache_dir: Path = Field(default_factory=_user_cache_dir)
    # Off: every load converts afresh (a read-only home, or files that must leave no copy).
    ingest_cache: bool = True
    # A larger file fails alone instead of filling the submitter's memory and Redis.
    ingest_max_file_mb: int = Field(default=256, ge=1, le=16_384)

    @field_validator("rate_limits")
    @classmethod
    def _rate_limit_keys(cls, value: dict[str, RateLimit]) -> dict[str, RateLimit]:
        bad = [key for key in value if not _RATE_LIMIT_KEY.match(key)]
        if bad:
            raise ValueError(
                f"rate limits are keyed by 'provider/name' or 'provider', not {bad[0]!r}"
            )
        return value

    # A worker serves Prometheus metrics on this port (/metrics); None: no metrics server.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Ports from metrics_port a worker may take, the first free one, so several worker
    # processes on one host share one setting (9100 and 8: 9100-9107); 1: that port or fail.
    metrics_port_range: int = Field(default=1, ge=1, le=1000)
    # Loopback keeps the metrics (model names, spend) on the host; compose listens on its
    # private network (0.0.0.0 inside the container, no port published).
    metrics_host: str = "127.0.0.1"

    def resolved_model(self) -> str:
        if self.model:
            return self.model
        if self.openai_api_key:
            return "openai/gpt-4o-mini"
        if self.anthropic_api_key:
            return "anthropic/claude-haiku-4-5"
        return "scripted/generic"

    def resolved_sub_model(self) -> str:
        return self.sub_model or self.resolved_model()

    def price_table(self) -> dict[str, ModelPrice]:
        return {**DEFAULT_PRICES, **self.prices}


def redis_retry(settings: Settings) -> Retry:
    """Retries (of connection errors, timeouts and LOADING) that last ``redis_retry_s`` at least.

    Past the first few tries each pause is at least half the cap (equal jitter: restarted
    Redis is not met by every client at once), hence the count.
    """
    if settings.redis_retry_s <= 0:
        return Retry(NoBackoff(), 0)
    tries = 6 + math.ceil(settings.redis_retry_s / (timing.REDIS_RETRY_CAP_S / 2))
    return Retry(
        EqualJitterBackoff(cap=timing.REDIS_RETRY_CAP_S, base=timing.REDIS_RETRY_FIRST_S), tries
    )


def redis_client(settings: Settings, url: str | None = None) -> redis.Redis:
    """A client that rides out a Redis restart (``redis_retry``) and whose pool waits for a
    free connection rather than raising when full.

    A retried write may run twice when Redis applied it but the connection broke before
    the reply: our writes are idempotent or harmless twice (replies and wire messages are
    taken once by id, leases and results are scripts that check first); at worst an
    attempt is counted twice or a trajectory entry appears twice.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url or settings.redis_url or "",
        max_connections=settings.redis_max_connections,
        # Callers queue behind commands that are riding out an outage.
        timeout=max(30.0, settings.redis_retry_s),
        socket_timeout=30,
        socket_connect_timeout=10,
        health_check_interval=30,
        retry=redis_retry(settings),
    )
    return redis.Redis(connection_pool=pool)


def redis_answers(settings: Settings) -> bool:
    """Whether Redis answers one PING now, without riding out an outage: for a process
    that is ending, whose cleanup must not wait for a Redis that may never come back."""
    client = redis_client(settings.model_copy(update={"redis_retry_s": 0}))
    # A Redis that is black-holed or hung, not only refused, must not hold the caller long.
    client.connection_pool.connection_kwargs.update(socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def child_environment() -> dict[str, str]:
    """The minimal environment for processes we start that must not see secrets."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    return {k: v for k, v in os.environ.items() if k in keep}
