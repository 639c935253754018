"""Our Celery app and task base: typed homes for what workers keep per process.

``RLMCelery`` carries the settings it was built with and makes the process's
``WorkerRuntime`` on first use; ``RLMTask`` gives every task typed access to both. Nothing
is stuck onto Celery objects as an ad-hoc attribute.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from celery import Celery, Task

from rlm_jobs.config import Settings
from workers.runtime import WorkerRuntime

if TYPE_CHECKING:
    from workers.credit import PromptCredit
    from workers.reaper import Reaper


class RLMCelery(Celery):  # type: ignore[misc]  # celery ships no type hints
    """A Celery app with the rlm-jobs settings and the process's shared resources."""

    def __init__(self, *args: Any, settings: Settings | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._settings = settings
        self._runtime: WorkerRuntime | None = None
        self._lock = threading.Lock()
        # Set by the worker's lifecycle hooks and bootsteps of this process.
        self.reaper: Reaper | None = None
        self.prompt_credit: PromptCredit | None = None

    @property
    def settings(self) -> Settings:
        """The settings the app was built with, else read from the environment once."""
        with self._lock:
            if self._settings is None:
                self._settings = Settings()
            return self._settings

    @property
    def runtime(self) -> WorkerRuntime:
        """The process's connections, router, engine and pools, built on first use."""
        settings = self.settings
        with self._lock:
            if self._runtime is None:
                self._runtime = WorkerRuntime(self, settings)
            return self._runtime

    def built_runtime(self) -> WorkerRuntime | None:
        """The runtime if this process has built one (nothing is built to answer)."""
        with self._lock:
            return self._runtime

    def close_runtime(self) -> None:
        """What a worker does on its way out: end the runtime if one was built."""
        with self._lock:
            runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.close()


class RLMTask(Task):  # type: ignore[misc]
    """Base of our tasks: the app's runtime, typed."""

    @property
    def rlm_app(self) -> RLMCelery:
        app = self.app
        if not isinstance(app, RLMCelery):
            raise TypeError(f"rlm-jobs tasks run on an RLMCelery app, not {type(app).__name__}")
        return app

    @property
    def runtime(self) -> WorkerRuntime:
        return self.rlm_app.runtime
