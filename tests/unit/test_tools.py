"""Custom tools without a sandbox: registration rules, the JSON boundary, the runner's time
limit and slots, and a job's tool calls journaled and answered again from the journal."""

from __future__ import annotations

import sys
import threading
import types
from typing import Any

import pytest

from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError, ToolError
from rlm_jobs.journal import MemoryJournals
from rlm_jobs.tools import Tool, Toolbox, ToolSet
from rlm_jobs.tools.calls import ToolCallsForJob
from rlm_jobs.tools.runner import ToolRunner
from rlm_jobs.tools.values import encode_result, parse_arguments
from rlm_jobs.trajectory import Trajectory
from sandbox.wire import ToolRequest


def lookup(key: str, default: int = 0) -> int:
    """Look `key` up.

    More text."""
    return len(key) + default


# ---- registration ----------------------------------------------------------------------


def test_a_tool_carries_its_signature_and_docstring_or_its_description() -> None:
    tools = ToolSet.from_mapping(
        {"lookup": lookup, "described": {"tool": lookup, "description": "Said otherwise."}}
    )
    (first, second) = tools.specs
    assert (first.name, first.signature) == ("lookup", "(key: str, default: int = 0) -> int")
    assert first.doc == "Look `key` up.\n\nMore text."
    assert second.doc == "Said otherwise."


@pytest.mark.parametrize(
    ("mapping", "problem"),
    [
        ({"llm_query": lookup}, "one of the REPL's own names"),
        ({"context_3": lookup}, "one of the REPL's own names"),
        ({"ToolError": lookup}, "one of the REPL's own names"),
        ({"print": lookup}, "would hide the Python builtin print()"),
        ({"class": lookup}, "not a Python identifier"),
        ({"_private": lookup}, "not a Python identifier"),
        ({"two words": lookup}, "not a Python identifier"),
        ({"rates": {"EUR": 1.08}}, "a dict entry takes 'tool'"),
        ({"rate": 1.08}, "is a float, not a function"),
        ({"x": {"tool": lookup, "timeout": 3}}, "not 'timeout'"),
        ({"x": {"tool": lookup, "timeout_s": -1}}, "timeout_s must be a positive number"),
        ({"x": {"tool": lookup, "description": 3}}, "description must be a string"),
    ],
)
def test_bad_registrations_are_refused_with_a_reason(mapping: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        ToolSet.from_mapping(mapping)


def test_at_most_64_tools_are_taken() -> None:
    ToolSet.from_mapping({f"tool_{i}": lookup for i in range(64)})
    with pytest.raises(ConfigError, match="65 custom tools is more than the 64"):
        ToolSet.from_mapping({f"tool_{i}": lookup for i in range(65)})


def test_a_module_gives_its_tools_mapping_or_its_public_functions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_mapping = types.ModuleType("tools_with_mapping")
    with_mapping.TOOLS = {"lookup": lookup}  # type: ignore[attr-defined]
    with_mapping.other = lookup  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tools_with_mapping", with_mapping)
    assert ToolSet.from_module("tools_with_mapping").names == ["lookup"]
    # Without TOOLS: the functions the module itself defines and makes public
    plain = types.ModuleType("tools_plain")
    exec("import json\nfrom os.path import join\ndef shout(text):\n    return text.upper()\n"
         "def _hidden():\n    pass\n", plain.__dict__)  # fmt: skip
    monkeypatch.setitem(sys.modules, "tools_plain", plain)
    assert ToolSet.from_module("tools_plain").names == ["shout"]
    with pytest.raises(ConfigError, match=r"cannot import the tools module 'no\.such\.module'"):
        ToolSet.from_module("no.such.module")
    empty = types.ModuleType("tools_empty")
    monkeypatch.setitem(sys.modules, "tools_empty", empty)
    with pytest.raises(ConfigError, match="defines no public function and no TOOLS"):
        ToolSet.from_module("tools_empty")


def test_arguments_are_checked_against_the_signature_before_the_tool_runs() -> None:
    tool = Tool.of("lookup", lookup)
    tool.check_arguments(["k"], {"default": 2})
    with pytest.raises(ToolError, match="unexpected keyword argument 'nope'"):
        tool.check_arguments(["k"], {"nope": 1})
    with pytest.raises(ToolError, match="missing a required argument: 'key'"):
        tool.check_arguments([], {})


# ---- the JSON boundary -----------------------------------------------------------------


def test_arguments_must_be_json_of_the_expected_shape_and_size() -> None:
    assert parse_arguments('{"args": [1, "x"], "kwargs": {"k": null}}', "t", 1024) == (
        [1, "x"],
        {"k": None},
    )
    for text, problem in [
        ("[", "not JSON"),
        ('{"args": []}', "malformed call"),
        ('{"args": {}, "kwargs": {}}', "args must be a list"),
        ('{"args": [' + "[" * 50_000 + "]" * 50_000 + '], "kwargs": {}}', "not JSON"),
        ('{"args": [' + "9" * 5000 + '], "kwargs": {}}', "not JSON"),
        ('{"args": ["' + "x" * 2_000_000 + '"], "kwargs": {}}', "more than the 1,048,576"),
    ]:
        with pytest.raises(ToolError, match=problem):
            parse_arguments(text, "t", 1024 * 1024)


def test_results_must_be_json_and_small_enough() -> None:
    assert encode_result({"a": [1, 2.5, None, "ü"]}, "t", 1024) == '{"a":[1,2.5,null,"ü"]}'
    for value, problem in [
        (object(), "not JSON \\(object\\)"),
        (float("nan"), "not JSON"),
        ({1: {2}}, "not JSON"),
        ("x" * 2000, "returned 2,002 bytes of JSON, more than the 1,024"),
    ]:
        with pytest.raises(ToolError, match=problem):
            encode_result(value, "t", 1024)


# ---- the runner ------------------------------------------------------------------------


def test_the_runner_answers_a_late_tool_at_its_limit_and_bounds_hung_ones() -> None:
    runner = ToolRunner(concurrency=1)
    release = threading.Event()
    late = runner.run("hang", release.wait, [], {}, timeout_s=0.2)
    assert not late.ok and late.error == "hang did not finish within its 0.2 s limit"
    # The hung call still holds the only slot: the next one says so instead of piling up
    blocked = runner.run("next", lambda: 1, [], {}, timeout_s=0.2)
    assert not blocked.ok and "all 1 tool slots of this worker are busy" in blocked.error
    release.set()
    done = runner.run("next", lambda: 1, [], {}, timeout_s=2)
    assert (done.ok, done.value) == (True, 1)


def test_a_tool_that_raises_even_system_exit_is_an_error_not_a_crash() -> None:
    runner = ToolRunner(concurrency=2)

    def exits() -> None:
        raise SystemExit(3)

    outcome = runner.run("exits", exits, [], {}, timeout_s=2)
    assert not outcome.ok and outcome.error == "exits raised SystemExit: 3"


# ---- a job's calls ---------------------------------------------------------------------


def request(name: str, arguments: str) -> ToolRequest:
    return ToolRequest(seq=0, id="r", name=name, arguments=arguments)


def calls_for(toolbox: Toolbox, journals: MemoryJournals, trajectory: Trajectory) -> Any:
    return ToolCallsForJob(
        toolbox=toolbox,
        job_id="job-1",
        journal=journals.open("job-1"),
        calls=journals.calls,
        trajectory=trajectory,
        report=lambda: None,
        handover=lambda: None,
    )


def test_a_jobs_tool_results_are_journaled_and_replayed_refusals_are_not() -> None:
    ran: list[str] = []

    def note(key: str) -> str:
        ran.append(key)
        return key.upper()

    toolbox = Toolbox.build(ToolSet.from_mapping({"note": note}), Settings())
    journals = MemoryJournals()
    first = calls_for(toolbox, journals, Trajectory())
    assert first(request("note", '{"args": ["a"], "kwargs": {}}')).text == '"A"'
    assert not first(request("note", '{"args": [], "kwargs": {}}')).ok  # refused: no entry
    assert not first(request("nope", '{"args": [], "kwargs": {}}')).ok
    assert [e["kind"] for e in journals.logs["job-1"]] == ["tool"]
    # The next run of the job gets the stored result; the tool does not run again
    trajectory = Trajectory()
    again = calls_for(toolbox, journals, trajectory)
    assert again(request("note", '{"args": ["a"], "kwargs": {}}')).text == '"A"'
    assert ran == ["a"]
    (entry,) = trajectory.take_subcalls()
    assert (entry["tool"], entry["replayed"], entry["response"]) == ("note", True, '"A"')
    assert again.counters.done == 1 and again.counters.in_flight == 0
