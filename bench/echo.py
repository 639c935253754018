"""The bare-Celery baseline: an echo task on its own app, on the same Redis broker.

``celery -A bench.echo worker -Q bench.echo`` runs it (``bench.cluster.echo_worker``). The
worker reads ``BENCH_REDIS_URL`` when Celery first configures the app (nothing connects at
import). Two ways back, as measured before the design:

- ``reply_key`` given: the task RPUSHes the payload there and the caller BLPOPs it (what
  rlm-jobs' dispatcher does);
- ``reply_key`` empty: the result goes to the Redis result backend (``AsyncResult.get``).

``sleep`` is the naive fan-out baseline: a Celery group of tasks that each wait out the
provider latency, collected through the result backend.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis
from celery import Celery

QUEUE = "bench.echo"
ECHO_TASK = "bench.echo.echo"
SLEEP_TASK = "bench.echo.sleep"


def config(redis_url: str) -> dict[str, Any]:
    """A plain configuration: JSON, one prefetched message per thread, no events."""
    return {
        "broker_url": redis_url,
        "result_backend": redis_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
    }


def create_app(redis_url: str | None = None) -> Celery:
    """The app; without a URL it is configured from ``BENCH_REDIS_URL`` on first use."""
    app = Celery("bench_echo", set_as_current=False)
    if redis_url is not None:
        app.conf.update(config(redis_url))
    else:
        app.add_defaults(lambda: config(os.environ["BENCH_REDIS_URL"]))
    return app


app = create_app()

_client: redis.Redis | None = None
_client_lock = threading.Lock()


def _redis() -> redis.Redis:
    global _client
    with _client_lock:
        if _client is None:
            _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"], socket_timeout=30)
        return _client


@app.task(name=ECHO_TASK)  # type: ignore[untyped-decorator]  # Celery is untyped
def echo(reply_key: str, payload: str) -> str:
    if reply_key:
        pipe = _redis().pipeline()
        pipe.rpush(reply_key, payload)
        pipe.expire(reply_key, 300)
        pipe.execute()
    return payload


@app.task(name=SLEEP_TASK)  # type: ignore[untyped-decorator]
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
