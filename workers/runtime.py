"""What one worker process shares between its tasks: connections, router, dispatcher,
and the pool that runs the llm tasks' provider calls.

Built on first use (never at import, never before a fork) and kept for the process
lifetime, one per Celery app.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery

from rlm_jobs.clients.router import LLMRouter
from rlm_jobs.config import Settings, redis_client
from rlm_jobs.contexts import put_context
from rlm_jobs.engine import Engine
from rlm_jobs.sandboxes.base import ReplFactory
from rlm_jobs.sandboxes.pool import SandboxPool
from rlm_jobs.sandboxes.registry import create_backend
from rlm_jobs.sandboxes.session import open_repl_factory
from rlm_jobs.store import Store
from workers.dispatcher import CeleryDispatcher
from workers.orchestrator import LeaseKeeper
from workers.replies import ReplyCollector

_lock = threading.Lock()


def settings_of(app: Celery) -> Settings:
    """The settings an app was built with (``create_app(settings)``), else the environment."""
    settings = getattr(app, "rlm_settings", None)
    if settings is None:
        settings = Settings()
        app.rlm_settings = settings
    assert isinstance(settings, Settings)
    return settings


class WorkerRuntime:
    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        assert settings.redis_url
        self.redis = redis_client(settings)
        self.store = Store(self.redis)
        self.router = LLMRouter(settings)
        self._engine: Engine | None = None
        self._collector: ReplyCollector | None = None
        self._repl_factory: ReplFactory | None = None
        self._sandbox_pool: SandboxPool | None = None
        self._llm_pool: ThreadPoolExecutor | None = None
        self._lease_keeper: LeaseKeeper | None = None

    def engine(self) -> Engine:
        """The orchestrator's engine; its reply collector starts with the first job."""
        with _lock:
            if self._engine is None:
                # BLPOP blocks its connection: the collector gets its own client.
                blocking = redis_client(self.settings)
                self._collector = ReplyCollector(blocking, self.worker_id.replace(":", "-"))
                client = self.redis
                # Started with the first job, in the process that runs jobs (after any fork).
                self._sandbox_pool = SandboxPool(
                    client, self.settings, create_backend(self.settings)
                )
                self._engine = Engine(
                    router=self.router,
                    dispatcher=CeleryDispatcher(
                        self.app, client, self._collector, chunk_size=self.settings.llm_chunk_size
                    ),
                    repl_factory=open_repl_factory(client, self.settings, pool=self._sandbox_pool),
                    store_context=lambda value: put_context(client, value),
                    max_output_tokens=self.settings.max_output_tokens,
                    child_concurrency=self.settings.child_concurrency,
                    default_sub_model=self.settings.sub_model,
                )
            return self._engine

    def lease_keeper(self) -> LeaseKeeper:
        """The one thread that renews the leases of all jobs of this process (made lazily)."""
        with _lock:
            if self._lease_keeper is None:
                self._lease_keeper = LeaseKeeper(
                    self.store,
                    ttl_s=self.settings.lease_ttl_s,
                    renew_s=self.settings.lease_renew_s,
                )
            return self._lease_keeper

    def llm_pool(self) -> ThreadPoolExecutor:
        """Where llm tasks run their prompts: one bound on provider calls for the process.

        A chunk's prompts run concurrently and the chunks of every task share these
        threads, so ``llm_worker_concurrency`` caps the calls in flight however the prompts
        were split into tasks.
        """
        with _lock:
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
        if self._lease_keeper is not None:
            self._lease_keeper.close()
        if self._sandbox_pool is not None:
            self._sandbox_pool.close()  # ends its sandboxes and waits for queued teardowns
        if self._engine is not None:
            self._engine.dispatcher.close()
        self.router.close()
        self.redis.close()


def runtime_for(app: Celery) -> WorkerRuntime:
    with _lock:
        runtime: Any = getattr(app, "rlm_runtime", None)
        if runtime is None:
            runtime = WorkerRuntime(app, settings_of(app))
            app.rlm_runtime = runtime
        assert isinstance(runtime, WorkerRuntime)
        return runtime
