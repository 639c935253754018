"""Library mode: ``RLM(custom_tools=...)`` and ``RLM(persistent=True)`` with real sandboxes,
Redis and the scripted provider over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rlm_jobs import RLM, prompts
from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError
from rlm_jobs.models import JobStatus
from rlm_jobs.redis_server import RedisServer
from tests.support import tools as tooldefs
from tests.support import wait_sandboxes_gone
from tests.support.tools import INVOICES, QUESTIONS, TABLES, invoice_total

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def library_settings(
    scripted_settings: Settings, redis_server: RedisServer, redis_client: redis.Redis
) -> Iterator[Settings]:
    yield scripted_settings.model_copy(
        update={"redis_url": redis_server.url, "sandbox_redis_socket": redis_server.unix_socket}
    )
    wait_sandboxes_gone(str(redis_server.workdir))


def tool_calls(trajectory: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        call
        for entry in trajectory
        if entry.get("type") == "iteration"
        for block in entry["code_blocks"]
        for call in block["result"]["rlm_calls"]
        if call.get("kind") == "tool"
    ]


def test_custom_tools_are_called_from_cells_and_shown_to_the_model(
    library_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "tools.log"
    monkeypatch.setenv("RLM_TEST_TOOL_LOG", str(log))  # the tools run in this process
    with RLM(
        backend="scripted",
        backend_kwargs={"model_name": "tools"},
        custom_tools=tooldefs.TOOLS,
        settings=library_settings,
    ) as rlm:
        result = rlm.completion(INVOICES, root_prompt="What is the total in US dollars?")
    # The rates came from the host's tool; the unknown currency's error reached the cell as
    # ToolError and was reported; the archive timed out and the job went on
    assert result.status is JobStatus.COMPLETED, result.reason
    assert result.response == (
        f"{invoice_total():.2f} USD; no rate for XYZ; "
        "not filed: archive_total did not finish within its 1 s limit"
    )
    assert tooldefs.tool_log(str(log)) == [
        ["fx_rate", "EUR"],
        ["fx_rate", "GBP"],
        ["fx_rate", "USD"],
        ["fx_rate", "XYZ"],
        ["archive_total", invoice_total()],
    ]
    # The model was told each tool's name, signature and docstring
    first_prompt = next(e for e in result.trajectory if e.get("type") == "iteration")["prompt"]
    system = first_prompt[0]["content"]
    assert prompts.TOOLS_HEADER in system
    assert "- `fx_rate(currency: str) -> float`\n  What one unit of `currency`" in system
    assert "- `archive_total(total: float) -> str`" in system
    # Every call is in the trajectory, the failures with their errors
    calls = tool_calls(result.trajectory)
    assert [c["tool"] for c in calls] == ["fx_rate"] * 4 + ["archive_total"]
    assert calls[3]["error"] == "fx_rate raised ValueError: no exchange rate for 'XYZ'"
    assert calls[4]["error"] == "archive_total did not finish within its 1 s limit"
    assert calls[0]["prompt"] == '{"args":["EUR"],"kwargs":{}}'
    assert calls[0]["response"] == "1.08" and "error" not in calls[0]


def test_without_tools_the_model_is_told_none(library_settings: Settings) -> None:
    with RLM(
        backend="scripted", backend_kwargs={"model_name": "tools"}, settings=library_settings
    ) as rlm:
        result = rlm.completion(INVOICES, root_prompt="What is the total in US dollars?")
    assert result.response == "no rates"


def test_tools_are_checked_when_the_rlm_is_made(library_settings: Settings) -> None:
    with pytest.raises(ConfigError, match="custom tool name 'llm_query' is one of the REPL's"):
        RLM(custom_tools={"llm_query": len}, settings=library_settings)
    with pytest.raises(ConfigError, match="custom_sub_tools is not supported"):
        RLM(custom_tools={"f": len}, custom_sub_tools={}, settings=library_settings)


def ask_all(rlm: RLM) -> list[Any]:
    return [rlm.completion(t, root_prompt=q) for t, q in zip(TABLES, QUESTIONS, strict=True)]


def test_a_persistent_rlm_keeps_its_repl_and_conversation_across_questions(
    library_settings: Settings,
) -> None:
    with RLM(
        backend="scripted",
        backend_kwargs={"model_name": "session"},
        persistent=True,
        settings=library_settings,
    ) as rlm:
        first, second, third = ask_all(rlm)
    assert [r.status for r in (first, second, third)] == [JobStatus.COMPLETED] * 3
    assert (first.response, second.response) == ("17", "11")
    # The third question used a variable of the first: table_1 was still in the REPL
    assert third.response == "apples, plums"
    # and continued the conversation: its first prompt holds both earlier questions, and
    # the earlier contexts are there as context_0 and context_1
    prompt = next(e for e in third.trajectory if e.get("type") == "iteration")["prompt"]
    users = [m["content"] for m in prompt if m["role"] == "user"]
    assert sum(1 for u in users if prompts.QUERY_HEADER in u) == 3
    assert users[-1].startswith(f"{prompts.SESSION_NOTE}: it is question 3.")
    assert "Your answer to the previous question was: 11" in users[-1]
    first_output = third.trajectory[1]["code_blocks"][0]["result"]["stdout"]
    assert "table_1: dict" in first_output and "table_2: dict" in first_output


def test_without_persistent_a_question_cannot_see_the_last_ones(
    library_settings: Settings,
) -> None:
    with RLM(
        backend="scripted", backend_kwargs={"model_name": "session"}, settings=library_settings
    ) as rlm:
        *_, third = ask_all(rlm)
    assert third.response == "no earlier question"


def test_the_tools_and_sessions_example_runs_offline() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "examples/tools_and_sessions.py"],
        capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")}, cwd=root,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "tools:   COMPLETED: 244.09 USD; no rate for CHF; not filed: there is no archive tool",
        "session: question 1: What is the total? -> 15",
        "session: question 2: What is the total? -> 11",
        "session: question 3: Which items grew since the first question? -> apples, plums",
    ]
