"""What one worker process shares between its tasks: connections, router, dispatcher,
and the pool that runs the llm tasks' provider calls.

Built on first use (never at import, never before a fork) and kept for the process
lifetime, one per Celery app (``RLMCelery.runtime``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import redis
from celery import Celery

from rlm_jobs.clients.router import LLMRouter
from rlm_jobs.config import Settings, redis_answers, redis_client
from rlm_jobs.engine import Engine
from rlm_jobs.journal import JournalStore
from rlm_jobs.metrics import Metrics
from rlm_jobs.models import JobResult
from rlm_jobs.providers import ProviderControls
from rlm_jobs.sandboxes.pool import SandboxPool
from rlm_jobs.sandboxes.registry import create_backend
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.session import open_repl_factory
from rlm_jobs.sessions.store import SessionStore
from rlm_jobs.store import AlsoStep, Store
from rlm_jobs.tools import Toolbox, ToolSet
from workers.claims import ClaimKeeper
from workers.dispatcher import CeleryDispatcher
from workers.leases import LeaseKeeper
from workers.llm_slots import LlmSlots
from workers.names import ORCHESTRATE_QUEUE, RUN_JOB_TASK
from workers.replies import ReplyCollector

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self._lock = threading.Lock()
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        assert settings.redis_url
        self.redis = redis_client(settings)
        self.store = Store(self.redis)
        self.sessions = SessionStore(self.redis, idle_ttl_s=settings.session_idle_ttl_s)
        self.journals = JournalStore(self.redis)
        self.calls = self.journals.calls
        # Rate limits, response cache and batch budgets, shared with the whole cluster.
        self.controls = ProviderControls.from_settings(self.redis, settings)
        # This process's Prometheus metrics, served by MonitoringStep when metrics_port is set.
        self.metrics = Metrics()
        self.router = LLMRouter(settings, controls=self.controls, observer=self.metrics)
        self._engine: Engine | None = None
        self._collector: ReplyCollector | None = None
        self._sandbox_pool: SandboxPool | None = None
        self._sandbox_services: SandboxServices | None = None
        self._llm_pool: ThreadPoolExecutor | None = None
        self._lease_keeper: LeaseKeeper | None = None
        self._claim_keeper: ClaimKeeper | None = None
        # The llm pool's threads, counted: a chunk starts only the prompts that fit.
        self.llm_slots = LlmSlots(settings.llm_worker_concurrency)

    def engine(self) -> Engine:
        """The orchestrator's engine; its reply collector starts with the first job."""
        with self._lock:
            if self._engine is None:
                # The operator's tools (RLM_JOBS_TOOLS), imported first: a module that cannot
                # be imported fails each job with its reason, and leaves nothing half built.
                tools = ToolSet.from_module(self.settings.tools) if self.settings.tools else None
                toolbox = Toolbox.build(tools, self.settings) if tools else None
                # BLPOP blocks its connection: the collector gets its own client.
                blocking = redis_client(self.settings)
                self._collector = ReplyCollector(blocking, self.worker_id.replace(":", "-"))
                client = self.redis
                # Started with the first job, in the process that runs jobs (after any fork).
                services = self._services_locked()
                self._sandbox_pool = SandboxPool(services, create_backend(self.settings))
                self._engine = Engine.build(
                    self.settings,
                    client,
                    dispatcher=CeleryDispatcher(
                        self.app,
                        self.calls,
                        self._collector,
                        chunk_size=self.settings.llm_chunk_size,
                    ),
                    repl_factory=open_repl_factory(services, pool=self._sandbox_pool),
                    journals=self.journals,
                    tools=toolbox,
                )
            return self._engine

    def sandbox_services(self) -> SandboxServices:
        """What this process's sandboxes share (pub/sub hub, janitor, start slots)."""
        with self._lock:
            return self._services_locked()

    def _services_locked(self) -> SandboxServices:
        if self._sandbox_services is None:
            self._sandbox_services = SandboxServices(self.redis, self.settings)
        return self._sandbox_services

    def lease_keeper(self) -> LeaseKeeper:
        """The one thread that renews the leases of all jobs of this process (made lazily)."""
        with self._lock:
            if self._lease_keeper is None:
                self._lease_keeper = LeaseKeeper(
                    self.store,
                    ttl_s=self.settings.lease_ttl_s,
                    renew_s=self.settings.lease_renew_s,
                )
            return self._lease_keeper

    def finish_job(self, result: JobResult, *, session_id: str | None = None) -> bool:
        """Store a root job's one result and count it; False if it had one already. The
        job's session, if it has one, takes its next question in the same transaction."""
        also: AlsoStep | None = None
        if session_id is not None:
            session = session_id  # (narrowed for the closure)

            def also(pipe: redis.client.Pipeline) -> object:
                return self.sessions.release(session, result.job_id, pipe=pipe)

        stored = self.store.finish(result, also=also)
        if stored:
            self.metrics.job_finished(result.status)
        return stored

    def requeue(self, job_id: str) -> None:
        """Send a recorded job's orchestrate task again (a hand-over, a dead worker's job)."""
        self.app.send_task(RUN_JOB_TASK, args=[job_id], queue=ORCHESTRATE_QUEUE)

    def hand_over_jobs(self, reason: str) -> int:
        """Stop this process's jobs unfinished so other workers resume them (warm shutdown)."""
        with self._lock:
            keeper = self._lease_keeper
        return 0 if keeper is None else keeper.hand_over_all(reason)

    def claim_keeper(self) -> ClaimKeeper:
        """The one thread that keeps this llm worker's claims on running calls alive."""
        with self._lock:
            if self._claim_keeper is None:
                self._claim_keeper = ClaimKeeper(self.calls, ttl_s=self.settings.llm_claim_ttl_s)
            return self._claim_keeper

    def llm_pool(self) -> ThreadPoolExecutor:
        """Where llm tasks run their prompts: one bound on provider calls for the process.

        A chunk's prompts run concurrently and the chunks of every task share these
        threads, so ``llm_worker_concurrency`` caps the calls in flight however the prompts
        were split into tasks.
        """
        with self._lock:
            if self._llm_pool is None:
                self._llm_pool = ThreadPoolExecutor(
                    max_workers=self.settings.llm_worker_concurrency, thread_name_prefix="rlm-llm"
                )
            return self._llm_pool

    def close(self) -> None:
        if self._llm_pool is not None:
            # Prompts not yet started are cancelled (their task hands them back to the
            # broker); calls in flight finish, so none pushes its reply through a closed client.
            self._llm_pool.shutdown(wait=True, cancel_futures=True)
        if self._claim_keeper is not None:
            self._claim_keeper.close()
        if self._lease_keeper is not None:
            self._lease_keeper.close()
        if self._sandbox_services is not None and not redis_answers(self.settings):
            log.warning(
                "Redis does not answer: stopping this worker's sandboxes without removing "
                "their ACL users and keys (live orchestrators sweep them; copies expire)"
            )
            self._sandbox_services.redis_lost = True
        if self._sandbox_pool is not None:
            self._sandbox_pool.close()  # ends its sandboxes and waits for queued teardowns
        if self._sandbox_services is not None:
            self._sandbox_services.close()
        if self._engine is not None:
            self._engine.dispatcher.close()
        self.router.close()
        self.redis.close()
