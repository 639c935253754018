"""``LocalStack``: a whole rlm-jobs cluster inside one process, for ``rlm-jobs run``.

A private ``redis-server`` child is the broker and the store (its Unix socket serves the
sandboxes), and two real Celery workers consume from it in threads of this process: one on
``rlm.orchestrate``, one on ``rlm.llm``. They are the same workers ``celery -A workers
worker`` runs, not eager mode: tasks go through the broker, sub-calls fan out over the llm
worker's pool. Two workers rather than one on both queues so that orchestrators waiting on
sub-calls can never hold the threads those sub-calls need. When a model is
``scripted/...`` the offline ``ScriptedProvider`` is started in-process too.

``stop()`` ends the workers, the provider and the redis-server; the sandbox processes end
with their jobs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from celery import Celery, _state
from celery.worker import WorkController
from celery.worker import state as worker_state

from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError
from rlm_jobs.redis_server import RedisServer
from workers.app import create_app
from workers.base import RLMCelery
from workers.names import LLM_QUEUE, ORCHESTRATE_QUEUE

# LLM calls are I/O-bound: a thread each is cheap, and a batch of llm_query_batched calls
# from several jobs should not queue behind one another.
DEFAULT_LLM_THREADS = 32
# Worker start is a broker connection and a few imports; more than this means it failed.
START_TIMEOUT_S = 30.0
# A warm stop waits for running tasks; jobs are finished or cancelled by then.
STOP_TIMEOUT_S = 20.0


class _Provider(Protocol):
    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


class _ThreadWorker(WorkController):  # type: ignore[misc]  # celery ships no type hints
    """A WorkController that says when its consumer is ready."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        self.ready.set()


def _uses_scripted(settings: Settings) -> bool:
    return any(
        m.startswith("scripted/")
        for m in (settings.resolved_model(), settings.resolved_sub_model())
    )


class LocalStack:
    """Start with ``start()`` or ``with``; ``settings`` then points at the private stack."""

    def __init__(
        self,
        settings: Settings,
        *,
        orchestrators: int = 4,
        llm_threads: int = DEFAULT_LLM_THREADS,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        if orchestrators < 1 or llm_threads < 1:
            raise ConfigError("a local stack needs at least one thread per worker")
        self._base = settings
        self._orchestrators = orchestrators
        self._llm_threads = llm_threads
        self._start_timeout_s = start_timeout_s
        self._redis: RedisServer | None = None
        self._provider: _Provider | None = None
        self._workers: list[tuple[_ThreadWorker, threading.Thread]] = []
        self._task_app: RLMCelery | None = None
        self._previous_default_app: Celery | None = None
        self._settings: Settings | None = None
        self._log_handler: logging.Handler | None = None
        self.log_path: Path | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            raise RuntimeError("start the local stack first")
        return self._settings

    def describe(self) -> str:
        parts = [
            "redis-server",
            f"orchestrator worker ({self._orchestrators} threads)",
            f"llm worker ({self._llm_threads} threads)",
        ]
        if _uses_scripted(self._base):
            parts.append("scripted LLM provider (offline; set OPENAI_API_KEY for a real model)")
        return ", ".join(parts)

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> LocalStack:
        if self._settings is not None:
            raise RuntimeError("the local stack is already running")
        try:
            self._capture_logs()
            self._redis = RedisServer.start()
            update: dict[str, Any] = {
                "redis_url": self._redis.url,
                "sandbox_redis_socket": self._redis.unix_socket,
            }
            if _uses_scripted(self._base):
                update["scripted_base_url"] = self._start_provider()
            self._settings = self._base.model_copy(update=update)
            self._install_task_app()
            self._start_worker(ORCHESTRATE_QUEUE, self._orchestrators)
            self._start_worker(LLM_QUEUE, self._llm_threads)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Idempotent; safe after a partial start."""
        self._stop_workers()
        self._remove_task_app()
        if self._provider is not None:
            self._provider.stop()
            self._provider = None
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        self._settings = None
        self._release_logs()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- parts ------------------------------------------------------------------------------

    def _start_provider(self) -> str:
        # rlm_jobs.testing is the offline provider; imported only when a scripted model runs.
        from rlm_jobs.testing.provider import ScriptedProvider

        provider = ScriptedProvider().start()
        self._provider = provider
        return provider.url

    def _install_task_app(self) -> None:
        """Make an app of ours the process default: pool threads run tasks with it.

        Celery's thread pool traces a task with ``current_app``, which in a thread that set
        none is the process default (``celery -A`` makes its app the default; we must too).
        Both workers' tasks then share this app, and with it one worker runtime.
        """
        self._previous_default_app = _state.default_app
        self._task_app = create_app(self.settings)
        self._task_app.set_default()

    def _remove_task_app(self) -> None:
        if self._task_app is None:
            return
        # What the worker_shutdown signal does for `celery -A` workers.
        self._task_app.close_runtime()
        _state.set_default_app(self._previous_default_app)
        self._task_app = self._previous_default_app = None

    def _start_worker(self, queue: str, threads: int) -> None:
        # One app per worker: a worker's queue selection is stored on its app.
        app = create_app(self.settings)
        worker = _ThreadWorker(
            app=app,
            hostname=f"{queue}-{uuid.uuid4().hex[:8]}@local",
            queues=[queue],
            pool="threads",
            concurrency=threads,
            loglevel="WARNING",
            ready_callback=None,
            # kombu keeps one event loop per process (a global); two workers sharing it read
            # each other's broker sockets. The synchronous consumer loop keeps them apart.
            use_eventloop=False,
            # One process, nobody else to talk to: skip the cluster chatter.
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
        thread = threading.Thread(target=worker.start, name=f"celery-{queue}", daemon=True)
        thread.start()
        self._workers.append((worker, thread))
        deadline = time.monotonic() + self._start_timeout_s
        while not worker.ready.wait(0.05):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the local {queue} worker did not start (log: {self.log_path})")

    def _stop_workers(self) -> None:
        if not self._workers:
            return
        # The flag Celery's own embedded test workers stop on: every consumer loop in this
        # process checks it, finishes its running tasks and shuts down warm.
        worker_state.should_stop = 0
        try:
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for _, thread in self._workers:
                thread.join(max(0.0, deadline - time.monotonic()))
            if any(thread.is_alive() for _, thread in self._workers):
                worker_state.should_terminate = 0
                for _, thread in self._workers:
                    thread.join(5.0)
        finally:
            worker_state.should_stop = None
            worker_state.should_terminate = None
            self._workers = []

    def _capture_logs(self) -> None:
        """Worker warnings go to a file, not through the progress bar on the terminal."""
        fd, path = tempfile.mkstemp(prefix="rlm-jobs-local-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        self._log_handler = handler

    def _release_logs(self) -> None:
        """Keep the log only if something was written to it."""
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        path = self.log_path
        if path is not None and path.exists() and path.stat().st_size == 0:
            with contextlib.suppress(OSError):
                path.unlink()
            self.log_path = None
