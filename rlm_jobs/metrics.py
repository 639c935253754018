"""Prometheus metrics of one worker process: jobs, LLM calls, tokens, spend, errors, queues.

``Metrics`` owns a registry of its own (nothing is registered at import, and tests make as
many as they like). It is also the LLM router's call observer: the router calls
``call_done``, ``provider_error`` and ``rate_limit_wait`` for every call it makes. Queue
depths are read from Redis when Prometheus scrapes, never on a timer. ``serve`` starts
the ``/metrics`` HTTP server (workers/monitoring.py does, when ``metrics_port`` is set).

Counters are per process; Prometheus adds them up over the cluster (``sum(rate(...))``).
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from rlm_jobs import keys
from rlm_jobs.errors import ConfigError
from rlm_jobs.models import JobStatus

log = logging.getLogger(__name__)

CALL_KINDS = ("root", "sub")
# Waits for a rate-limit slot: most are short (smoothing), a cool-down after a 429 is long.
RATE_LIMIT_WAIT_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The metrics of one process; the LLM router's observer (``call_done`` and friends)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._jobs = Counter(
            "rlm_jobs_jobs", "Jobs this process finished, by final status.", ["status"], registry=r
        )
        self._calls = Counter(
            "rlm_jobs_llm_calls",
            "LLM calls by model and kind: root (the loop), sub (llm_query), cached (answered "
            "from the response cache, not sent).",
            ["model", "kind"],
            registry=r,
        )
        self._tokens = Counter(
            "rlm_jobs_tokens",
            "Tokens of calls sent to the provider, by model and direction (input, output).",
            ["model", "direction"],
            registry=r,
        )
        self._cost = Counter(
            "rlm_jobs_cost_usd", "USD spent on calls sent to the provider.", ["model"], registry=r
        )
        self._cached_cost = Counter(
            "rlm_jobs_cached_cost_usd",
            "USD that calls answered from the cache would have cost.",
            ["model"],
            registry=r,
        )
        self._errors = Counter(
            "rlm_jobs_provider_errors",
            "Failed provider calls (each try), by model and code: 429, 500, timeout, ...",
            ["model", "code"],
            registry=r,
        )
        self._waits = Histogram(
            "rlm_jobs_rate_limit_wait_seconds",
            "Time calls waited for a rate-limit slot or a cool-down, by model.",
            ["model"],
            buckets=RATE_LIMIT_WAIT_BUCKETS_S,
            registry=r,
        )
        ProcessCollector(registry=r)  # memory, CPU and open files of the worker
        # Every final status exists from the start, so rate() sees the first job of each.
        for status in JobStatus:
            if status.finished:
                self._jobs.labels(status=status.value)

    # ---- jobs ---------------------------------------------------------------------------

    def job_finished(self, status: JobStatus) -> None:
        """A job whose one result this process stored."""
        if not status.finished:
            raise ValueError(f"{status.value} is not a final status")
        self._jobs.labels(status=status.value).inc()

    # ---- the LLM router's observer ------------------------------------------------------

    def call_done(
        self,
        model: str,
        kind: str,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float,
        cached: bool,
    ) -> None:
        """A call that returned an answer. ``kind`` is "root" or "sub"; a cached one counts
        as kind "cached", and its tokens and cost (what it would have cost) apart from spend.
        """
        if kind not in CALL_KINDS:
            raise ValueError(f"unknown call kind {kind!r} (expected one of {CALL_KINDS})")
        if cached:
            self._calls.labels(model=model, kind="cached").inc()
            self._cached_cost.labels(model=model).inc(max(0.0, cost_usd))
            return
        self._calls.labels(model=model, kind=kind).inc()
        self._tokens.labels(model=model, direction="input").inc(max(0, input_tokens))
        self._tokens.labels(model=model, direction="output").inc(max(0, output_tokens))
        self._cost.labels(model=model).inc(max(0.0, cost_usd))

    def provider_error(self, model: str, code: str) -> None:
        """One failed try of a call: "429", "500", "timeout", ..."""
        self._errors.labels(model=model, code=code).inc()

    def rate_limit_wait(self, model: str, seconds: float) -> None:
        """A call waited ``seconds`` for its turn under the model's rate limit."""
        self._waits.labels(model=model).observe(max(0.0, seconds))

    # ---- queues and the HTTP server -----------------------------------------------------

    def watch_queues(self, client: redis.Redis, queues: Sequence[str]) -> QueueDepth:
        """Report the depth of ``queues`` (the broker's lists in ``client``) at each scrape;
        ``registry.unregister`` the result to stop."""
        collector = QueueDepth(client, queues)
        self.registry.register(collector)
        return collector

    def serve(self, port: int, *, host: str = "127.0.0.1", ports: int = 1) -> MetricsServer:
        """Serve ``/metrics`` on the first free port of ``port`` .. ``port + ports - 1``."""
        for candidate in range(port, port + ports):
            try:
                httpd, thread = start_http_server(candidate, addr=host, registry=self.registry)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise ConfigError(f"cannot serve metrics on {host}:{candidate}: {exc}") from exc
            return MetricsServer(host, candidate, httpd, thread)
        last = port + ports - 1
        where = f"port {port}" if ports == 1 else f"ports {port}-{last}"
        raise ConfigError(
            f"cannot serve metrics: {where} on {host} taken (other workers on this host?). "
            "Give each worker its own RLM_JOBS_METRICS_PORT, or let them share a range: "
            "RLM_JOBS_METRICS_PORT_RANGE=N takes the first free port of N from it"
        )


@dataclass
class MetricsServer:
    host: str
    port: int
    _httpd: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class QueueDepth(Collector):
    """``rlm_jobs_queue_depth{queue}``: messages waiting in each queue, read at scrape time.

    Celery's Redis transport keeps a queue as lists, one per priority step
    (``keys.broker_queue_lists``); the depth is their total length. Messages a worker has
    taken but not acknowledged are not waiting and are not counted.
    """

    def __init__(self, client: redis.Redis, queues: Sequence[str]) -> None:
        self._client = client
        self._queues = tuple(queues)

    def close(self) -> None:
        self._client.close()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "rlm_jobs_queue_depth", "Messages waiting in each queue.", labels=["queue"]
        )
        try:
            pipe = self._client.pipeline(transaction=False)
            for queue in self._queues:
                for name in keys.broker_queue_lists(queue):
                    pipe.llen(name)
            lengths = iter(pipe.execute())
        except redis.RedisError as exc:  # a scrape during an outage: no sample, not a crash
            log.warning("metrics: cannot read queue depths: %s", exc)
            yield family
            return
        for queue in self._queues:
            depth = sum(int(next(lengths)) for _ in keys.broker_queue_lists(queue))
            family.add_metric([queue], depth)
        yield family
