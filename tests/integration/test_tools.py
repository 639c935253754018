"""Custom tools in the service: ``RLM_JOBS_TOOLS`` on real ``celery -A workers worker``
orchestrators, the scripted ``tools`` policy calling them from its cells, the tools'
own log as the record of what ran where, and an orchestrator killed after the calls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rlm_jobs.redis_server import RedisServer
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import Cluster, wait_for, wait_sandboxes_gone
from tests.support import tools as tooldefs
from tests.support.tools import INVOICES, invoice_total
from workers.names import LLM_QUEUE, ORCHESTRATE_QUEUE

pytestmark = pytest.mark.timeout(240)

QUESTION = "What is the total in US dollars?"


@pytest.fixture
def cluster(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[Cluster]:
    with ScriptedProvider() as provider:
        c = Cluster(redis_server, provider, tmp_path)
        yield c
        c.stop()
        wait_sandboxes_gone(c.marker)


def tool_entries(trajectory: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        call
        for entry in trajectory
        if entry.get("type") == "iteration"
        for block in entry["code_blocks"]
        for call in block["result"]["rlm_calls"]
        if call.get("kind") == "tool"
    ]


EXPECTED_ANSWER = (
    f"{invoice_total():.2f} USD; no rate for XYZ; "
    "not filed: archive_total did not finish within its 1 s limit"
)


def test_tools_run_on_the_orchestrator_and_a_resumed_job_does_not_call_them_again(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given orchestrators with the test's tools module, logging every call they run
    log = str(tmp_path / "tools.log")
    tools_env = {"RLM_JOBS_TOOLS": "tests.support.tools", "RLM_TEST_TOOL_LOG": log}
    cluster.provider.configure(root_latency_s=1.0)
    orchestrator = cluster.start(ORCHESTRATE_QUEUE, **tools_env)
    cluster.start(LLM_QUEUE)
    handle = cluster.submitter.submit(QUESTION, INVOICES, model="scripted/tools")
    # The calls show in the job's progress as they happen
    wait_for(lambda: handle.progress().get("tool_calls") == 5, 60, "the five tool calls")
    assert handle.progress()["tool_calls_failed"] == 2  # the unknown currency, the timeout
    assert len(tooldefs.tool_log(log)) == 5
    # When the orchestrator dies during the next root call, after the tools ran
    orchestrator.kill()
    cluster.start(ORCHESTRATE_QUEUE, **tools_env)
    row = handle.wait(timeout_s=90).row()
    # Then the resumed job's cells got every tool's result from the journal: the answer is
    # the same and no tool ran again
    assert row["status"] == "COMPLETED", row
    assert row["answer"] == EXPECTED_ANSWER
    assert row["attempts"] == 2
    assert tooldefs.tool_log(log) == [
        ["fx_rate", "EUR"],
        ["fx_rate", "GBP"],
        ["fx_rate", "USD"],
        ["fx_rate", "XYZ"],
        ["archive_total", invoice_total()],
    ]
    entries = tool_entries(handle.trajectory())
    assert [e["tool"] for e in entries] == ["fx_rate"] * 4 + ["archive_total"]
    assert all(e.get("replayed") for e in entries)
    assert entries[3]["error"] == "fx_rate raised ValueError: no exchange rate for 'XYZ'"


def test_a_worker_without_tools_tells_the_model_so(cluster: Cluster) -> None:
    cluster.start(ORCHESTRATE_QUEUE)
    cluster.start(LLM_QUEUE)
    handle = cluster.submitter.submit(QUESTION, INVOICES, model="scripted/tools")
    assert handle.wait(timeout_s=90).row()["answer"] == "no rates"


def test_a_tools_module_that_cannot_be_imported_fails_jobs_with_its_reason(
    cluster: Cluster,
) -> None:
    cluster.start(ORCHESTRATE_QUEUE, RLM_JOBS_TOOLS="tests.no_such_tools")
    handle = cluster.submitter.submit(QUESTION, INVOICES, model="scripted/tools")
    row = handle.wait(timeout_s=60).row()
    assert row["status"] == "FAILED"
    assert "cannot import the tools module 'tests.no_such_tools'" in row["reason"]
