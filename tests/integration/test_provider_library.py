"""Provider controls in library mode (real sandbox, Redis and HTTP): ``max_subcalls``, the
response cache and a rate limit as ``RLM(...)`` users meet them.

The scripted ``exec`` model runs the query as its one cell, then answers with what the cell
printed, so the test writes the model's code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rlm_jobs.api import RLM
from rlm_jobs.config import RateLimit, Settings
from rlm_jobs.models import JobStatus
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.testing import ScriptedProvider
from tests.support import wait_sandboxes_gone

pytestmark = pytest.mark.timeout(120)

FAN_OUT = """
prompts = [f"Question: which part?\\n\\nText:\\nThis is part {i}." for i in range(12)]
replies = llm_query_batched(prompts)
refused = sum(r.startswith("Error: not run") for r in replies)
print(refused, sum(r.startswith("This is part") for r in replies))
print(replies[-1])
"""


@pytest.fixture
def settings(
    scripted_settings: Settings, redis_server: RedisServer, redis_client: redis.Redis
) -> Settings:
    return scripted_settings.model_copy(
        update={"redis_url": redis_server.url, "sandbox_redis_socket": redis_server.unix_socket}
    )


@pytest.fixture
def rlm_factory(settings: Settings, redis_server: RedisServer) -> Iterator[Any]:
    made: list[RLM] = []

    def factory(**kwargs: Any) -> RLM:
        rlm = RLM(
            backend="scripted", backend_kwargs={"model_name": "exec"}, settings=settings, **kwargs
        )
        made.append(rlm)
        return rlm

    yield factory
    for rlm in made:
        rlm.close()
    wait_sandboxes_gone(str(redis_server.workdir))


def sub_calls(trajectory: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        call
        for entry in trajectory
        if entry.get("type") == "iteration"
        for block in entry["code_blocks"]
        for call in block["result"]["rlm_calls"]
    ]


def test_prompts_past_the_cap_are_not_sent_and_say_why(
    rlm_factory: Any, scripted_provider: ScriptedProvider
) -> None:
    result = rlm_factory(max_subcalls=5).completion("ctx", root_prompt=FAN_OUT)
    assert result.status is JobStatus.COMPLETED, result.reason
    refused, answered = result.response.split()[:2]  # type: ignore[union-attr]
    assert (refused, answered) == ("7", "5")
    assert "limit of 5 sub-calls (max_subcalls)" in (result.response or "")
    subs = [r for r in scripted_provider.requests() if r.role == "sub"]
    assert len(subs) == 5
    assert result.usage.calls == 2 + 5  # two root turns, five sub-calls
    calls = sub_calls(result.trajectory)
    assert [c.get("refused") for c in calls if c.get("error")] == [7]
    assert sum(1 for c in calls if not c.get("error")) == 5


def test_the_default_cap_lets_ordinary_fan_outs_through(
    rlm_factory: Any, scripted_provider: ScriptedProvider
) -> None:
    result = rlm_factory().completion("ctx", root_prompt=FAN_OUT)
    assert result.status is JobStatus.COMPLETED, result.reason
    assert (result.response or "").split()[:2] == ["0", "12"]
    assert len([r for r in scripted_provider.requests() if r.role == "sub"]) == 12


def test_a_cap_of_zero_sends_nothing(rlm_factory: Any, scripted_provider: ScriptedProvider) -> None:
    result = rlm_factory(max_subcalls=0).completion("ctx", root_prompt=FAN_OUT)
    assert (result.response or "").split()[:2] == ["12", "0"]
    assert [r.role for r in scripted_provider.requests()] == ["root", "root"]


def test_a_repeated_completion_is_answered_from_the_cache(
    rlm_factory: Any, scripted_provider: ScriptedProvider
) -> None:
    first = rlm_factory(cache=True).completion("ctx", root_prompt=FAN_OUT)
    sent = len(scripted_provider.requests())
    again = rlm_factory(cache=True).completion("ctx", root_prompt=FAN_OUT)
    assert len(scripted_provider.requests()) == sent == 2 + 12
    assert again.response == first.response and again.status is JobStatus.COMPLETED
    assert (again.usage.calls, again.usage.cost_usd) == (0, 0.0)
    assert again.usage.cached_calls == first.usage.calls == 14
    assert again.usage.cached_cost_usd == pytest.approx(first.usage.cost_usd)
    assert all(e.get("cached") for e in again.trajectory if e["type"] == "iteration")
    assert all(c.get("cached") for c in sub_calls(again.trajectory))
    # Without cache=True the same completion is paid for again.
    rlm_factory().completion("ctx", root_prompt=FAN_OUT)
    assert len(scripted_provider.requests()) == 2 * sent


def test_a_rate_limit_paces_a_library_mode_job(
    settings: Settings, scripted_provider: ScriptedProvider, redis_server: RedisServer
) -> None:
    limited = settings.model_copy(update={"rate_limits": {"scripted": RateLimit(rpm=600)}})
    rlm = RLM(backend="scripted", backend_kwargs={"model_name": "exec"}, settings=limited)
    try:
        result = rlm.completion("ctx", root_prompt=FAN_OUT)
    finally:
        rlm.close()
    assert result.status is JobStatus.COMPLETED
    times = sorted(r.timestamp for r in scripted_provider.requests())
    assert len(times) == 14 and times[-1] - times[0] >= 13 * 0.1 * 0.95
    wait_sandboxes_gone(str(redis_server.workdir))
