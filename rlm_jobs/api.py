"""Library mode: ``RLM(...).completion(prompt)``, compatible with the reference's API.

A script written for the reference runs by changing its import to ``from rlm_jobs import
RLM``. The REPL still runs in a separate sandbox reached through Redis: the configured
``RLM_JOBS_REDIS_URL``, or a private ``redis-server`` started for the process lifetime.

``custom_tools`` (the reference's parameter: name -> function, or name -> ``{"tool":
function, "description": ...}``) become callables in the REPL that run here, in this
process, never in the sandbox (``rlm_jobs.tools``). ``persistent=True`` keeps one REPL and
its conversation across ``completion()`` calls (``rlm_jobs.sessions``) until ``close()``.
"""

from __future__ import annotations

import atexit
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import SecretStr, ValidationError

from rlm_jobs.clients.router import LLMRouter
from rlm_jobs.config import Settings, redis_client
from rlm_jobs.contexts import ContextValue, put_context
from rlm_jobs.dispatch import InProcessDispatcher
from rlm_jobs.engine import Engine, JobControl
from rlm_jobs.errors import ConfigError, DocumentError, SpecError
from rlm_jobs.journal import JournalStore
from rlm_jobs.loop import run_loop_with_trajectory
from rlm_jobs.models import ContextRef, JobSpec, JobStatus, Limits, Usage
from rlm_jobs.providers import ProviderControls
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.sandboxes.pool import SandboxPool
from rlm_jobs.sandboxes.registry import create_backend
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.session import open_repl_factory
from rlm_jobs.sessions.repl import SessionRepl
from rlm_jobs.submitter import UNREADABLE, Document
from rlm_jobs.tools import Toolbox, ToolSet
from rlm_jobs.trajectory import to_jsonl

# The reference's environment names that mean "a local sandbox process" here.
_ENVIRONMENTS = {"process": "process", "local": "process", "docker": "docker"}
_PROVIDERS = ("openai", "anthropic", "scripted")


@dataclass(frozen=True)
class ModelUsageSummary:
    total_calls: int
    total_input_tokens: int
    total_output_tokens: int
    total_cost_usd: float


@dataclass(frozen=True)
class UsageSummary:
    """Shaped like the reference's: ``model_usage_summaries[model].total_input_tokens``."""

    model_usage_summaries: dict[str, ModelUsageSummary]

    @classmethod
    def of(cls, usage: Usage) -> UsageSummary:
        return cls(
            {
                model: ModelUsageSummary(u.calls, u.input_tokens, u.output_tokens, u.cost_usd)
                for model, u in usage.by_model.items()
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_usage_summaries": {
                m: {
                    "total_calls": s.total_calls,
                    "total_input_tokens": s.total_input_tokens,
                    "total_output_tokens": s.total_output_tokens,
                    "total_cost_usd": s.total_cost_usd,
                }
                for m, s in self.model_usage_summaries.items()
            }
        }


@dataclass(frozen=True)
class RLMCompletion:
    root_model: str
    prompt: Any
    response: str | None
    usage_summary: UsageSummary
    execution_time: float
    status: JobStatus
    reason: str
    job_id: str
    iterations: int
    usage: Usage
    trajectory: list[dict[str, Any]] = field(repr=False)
    # The response parsed and validated against ``completion(..., schema=...)``.
    structured: Any = None

    def trajectory_jsonl(self) -> str:
        return to_jsonl(self.trajectory)


class _PrivateRedis:
    """One redis-server per process for library mode, stopped at exit.

    It dies with this process however the process ends (``RedisServer``'s guard); a child
    forked from this process starts one of its own rather than lean on its parent's.
    """

    _lock = threading.Lock()
    _server: RedisServer | None = None

    @classmethod
    def get(cls) -> RedisServer:
        with cls._lock:
            if cls._server is None or not cls._server.owned:
                cls._server = RedisServer.start()
                atexit.register(cls._server.stop)
            return cls._server


def _backend_settings(backend: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    if backend not in _PROVIDERS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(_PROVIDERS)}")
    update: dict[str, Any] = {}
    if kwargs.get("api_key"):
        update[f"{backend}_api_key"] = SecretStr(str(kwargs["api_key"]))
    if kwargs.get("base_url"):
        update[f"{backend}_base_url"] = str(kwargs["base_url"])
    return update


class RLM:
    def __init__(
        self,
        backend: str = "openai",
        backend_kwargs: dict[str, Any] | None = None,
        environment: str = "process",
        environment_kwargs: dict[str, Any] | None = None,
        max_depth: int = 1,
        max_iterations: int = 30,
        max_budget: float | None = None,
        max_timeout: float | None = None,
        max_tokens: int | None = None,
        max_errors: int | None = None,
        max_subcalls: int | None = None,
        cache: bool | None = None,
        other_backends: list[str] | None = None,
        other_backend_kwargs: list[dict[str, Any]] | None = None,
        persistent: bool = False,
        custom_tools: dict[str, Any] | None = None,
        custom_sub_tools: dict[str, Any] | None = None,
        settings: Settings | None = None,
        **_ignored: Any,  # reference options with no meaning here (logger, verbose, ...)
    ) -> None:
        base = settings or Settings()
        backend_kwargs = dict(backend_kwargs or {})
        if environment not in _ENVIRONMENTS:
            raise ConfigError(
                f"unknown environment {environment!r}; choose one of {', '.join(_ENVIRONMENTS)}"
            )
        update = _backend_settings(backend, backend_kwargs)
        update["sandbox_backend"] = _ENVIRONMENTS[environment]
        model_name = backend_kwargs.get("model_name")
        self.model = f"{backend}/{model_name}" if model_name else base.resolved_model()
        if other_backends:
            sub_backend = other_backends[0]
            sub_kwargs = dict((other_backend_kwargs or [{}])[0])
            update.update(_backend_settings(sub_backend, sub_kwargs))
            if sub_kwargs.get("model_name"):
                update["sub_model"] = f"{sub_backend}/{sub_kwargs['model_name']}"
        for key, value in (environment_kwargs or {}).items():
            if key in Settings.model_fields and key.startswith("sandbox_"):
                update[key] = value
        self.settings = base.model_copy(update=update)
        try:
            self.limits = Limits(
                max_depth=max_depth,
                max_iterations=max_iterations,
                max_cost_usd=max_budget,
                max_tokens=max_tokens,
                **({"max_timeout_s": max_timeout} if max_timeout else {}),
                **({"max_consecutive_errors": max_errors} if max_errors else {}),
                **({"max_subcalls": max_subcalls} if max_subcalls is not None else {}),
                cache=cache,
            )
        except ValidationError as exc:
            raise SpecError(f"invalid limits: {exc}") from exc
        # Checked now, so a bad tool fails here rather than in the first completion; without
        # custom_tools, the module RLM_JOBS_TOOLS names (if any) provides them.
        if custom_sub_tools is not None and custom_sub_tools is not custom_tools:
            raise ConfigError(
                "custom_sub_tools is not supported: child RLMs (rlm_query) get the same tools "
                "as the root, and llm_query sub-calls none"
            )
        if custom_tools is not None:
            tools = ToolSet.from_mapping(custom_tools)
        else:
            tools = ToolSet.from_module(base.tools) if base.tools else ToolSet()
        self._toolbox = Toolbox.build(tools, self.settings) if len(tools) else None
        self.persistent = persistent
        self._session: SessionRepl | None = None
        self._redis: redis.Redis | None = None
        self._router: LLMRouter | None = None
        self._dispatcher: InProcessDispatcher | None = None
        self._journals: JournalStore | None = None
        self._sandbox_pool: SandboxPool | None = None
        self._sandbox_services: SandboxServices | None = None

    def _connect(self) -> tuple[redis.Redis, Engine]:
        if self._redis is None:
            settings = self.settings
            if settings.redis_url is None:
                server = _PrivateRedis.get()
                settings = settings.model_copy(
                    update={"redis_url": server.url, "sandbox_redis_socket": server.unix_socket}
                )
                self.settings = settings
            self._redis = redis_client(settings)
            # Rate limits and the cache are shared with whatever else uses this Redis.
            self._router = LLMRouter(
                settings, controls=ProviderControls.from_settings(self._redis, settings)
            )
            self._journals = JournalStore(self._redis)
            self._dispatcher = InProcessDispatcher(
                self._router, self._journals.calls, concurrency=settings.subcall_concurrency
            )
            # One pool per RLM: later completions find their sandboxes started.
            self._sandbox_services = SandboxServices(self._redis, settings)
            self._sandbox_pool = SandboxPool(self._sandbox_services, create_backend(settings))
        assert self._router is not None and self._dispatcher is not None
        assert self._journals is not None
        assert self._sandbox_services is not None
        client = self._redis
        engine = Engine.build(
            self.settings,
            client,
            dispatcher=self._dispatcher,
            repl_factory=open_repl_factory(self._sandbox_services, pool=self._sandbox_pool),
            journals=self._journals,
            tools=self._toolbox,
        )
        return client, engine

    def completion(
        self,
        prompt: ContextValue | Document,
        root_prompt: str | None = None,
        schema: dict[str, Any] | None = None,
    ) -> RLMCompletion:
        """Answer ``root_prompt`` (or, as in the reference, the prompt itself) over ``prompt``.

        ``prompt`` may be a ``Document`` (``load_document``, ``load_corpus``): the model is
        told what it holds. With ``schema`` (a JSON Schema) the final answer must match it;
        its parsed value is ``structured``. With ``persistent=True`` the question continues
        the earlier ones: same REPL (their variables, ``prompt`` as ``context`` and as
        ``context_<n>``), same conversation.
        """
        description = None
        if isinstance(prompt, Document):
            if prompt.context is None:
                raise DocumentError(prompt.id, prompt.error or UNREADABLE)
            value, description = prompt.context, prompt.description
        else:
            value = prompt
        client, engine = self._connect()
        ref = put_context(client, value)
        try:
            if description is not None:
                ref = ContextRef.model_validate({**ref.model_dump(), "description": description})
            spec = JobSpec(
                # As in the reference, without a root prompt the task is in the context itself.
                query=root_prompt or "Answer the request contained in the context.",
                context=ref,
                model=self.model,
                sub_model=self.settings.sub_model,
                limits=self.limits,
                root_prompt=root_prompt,
                answer_schema=schema,
            )
        except ValidationError as exc:
            raise SpecError(f"invalid job: {exc}") from exc
        job_id = uuid.uuid4().hex
        session = None
        if self.persistent:
            if self._session is None:
                specs = self._toolbox.specs if self._toolbox is not None else []
                self._session = SessionRepl(engine.repl_factory, specs)
            session = self._session
        result, trajectory = run_loop_with_trajectory(
            spec, job_id, engine, JobControl.for_root(spec), session=session
        )
        return RLMCompletion(
            root_model=self.model,
            prompt=prompt,
            response=result.answer,
            usage_summary=UsageSummary.of(result.usage),
            execution_time=result.execution_time_s,
            status=result.status,
            reason=result.reason,
            job_id=job_id,
            iterations=result.iterations,
            usage=result.usage,
            trajectory=trajectory.entries,
            structured=result.structured,
        )

    def close(self) -> None:
        """End the session (if ``persistent``) and everything this RLM started."""
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._sandbox_pool is not None:
            self._sandbox_pool.close()
        if self._sandbox_services is not None:
            self._sandbox_services.close()
        if self._dispatcher is not None:
            self._dispatcher.close()
        if self._router is not None:
            self._router.close()
        if self._redis is not None:
            self._redis.close()
        self._redis = self._router = self._dispatcher = self._sandbox_pool = None
        self._journals = None
        self._sandbox_services = None

    def __enter__(self) -> RLM:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
