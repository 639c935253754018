"""Host-side tools called from real sandboxes, on every backend: JSON results over the wire,
a tool's failure or timeout raised in the cell, hostile requests refused on the host, and a
journaled result answered again without running the tool."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from rlm_jobs.config import Settings
from rlm_jobs.contexts import put_context
from rlm_jobs.journal import MemoryJournals
from rlm_jobs.sandboxes.pool import SandboxPool
from rlm_jobs.sandboxes.registry import create_backend
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.session import SandboxSession
from rlm_jobs.tools import Toolbox, ToolSet
from rlm_jobs.tools.calls import ToolCallsForJob
from rlm_jobs.trajectory import Trajectory
from tests.support import OpenSession, answer_from_text

# How long the slow tool would take, against its 0.5 s limit.
SLOW_S = 4.0


class Calls:
    """What the host-side functions were called with, in order (they run in this process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: list[tuple[str, tuple[Any, ...]]] = []

    def note(self, name: str, *args: Any) -> None:
        with self._lock:
            self.seen.append((name, args))


def make_tools(calls: Calls) -> ToolSet:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        calls.note("add", a, b)
        return a + b

    def echo(value: Any) -> Any:
        calls.note("echo", value)
        return value

    def fails(message: str) -> None:
        calls.note("fails", message)
        raise ValueError(message)

    def slow() -> str:
        calls.note("slow")
        time.sleep(SLOW_S)
        return "too late"

    def not_json() -> object:
        return object()

    return ToolSet.from_mapping(
        {
            "add": add,
            "echo": {"tool": echo, "description": "Return `value` unchanged."},
            "fails": fails,
            "slow": {"tool": slow, "timeout_s": 0.5},
            "not_json": not_json,
        }
    )


Handler = Callable[[MemoryJournals], ToolCallsForJob]


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def tool_handler(calls: Calls, settings: Settings) -> Handler:
    toolbox = Toolbox.build(make_tools(calls), settings)

    def make(journals: MemoryJournals) -> ToolCallsForJob:
        return ToolCallsForJob(
            toolbox=toolbox,
            job_id="job-tools",
            journal=journals.open("job-tools"),
            calls=journals.calls,
            trajectory=Trajectory(),
            report=lambda: None,
            handover=lambda: None,
        )

    return make


def run(session: SandboxSession, code: str) -> Any:
    return session.run_cell(code, timeout_s=20, max_output_chars=5000)


def test_a_tool_called_from_a_cell_returns_its_json_result(
    open_session: OpenSession, tool_handler: Handler, calls: Calls
) -> None:
    tools = tool_handler(MemoryJournals())
    session = open_session("ctx", tools=tools)
    out = run(session, "print(add(2, b=3), echo({'k': [1, 2.5, None, 'ü']}))\nprint(add.__doc__)")
    assert out.error is None, out.error
    lines = out.stdout.splitlines()
    assert lines[0] == "5 {'k': [1, 2.5, None, 'ü']}"
    # The REPL's function carries the host function's signature and docstring
    assert lines[1] == "add(a: int, b: int) -> int" and "Add two integers." in out.stdout
    assert calls.seen == [("add", (2, 3)), ("echo", ({"k": [1, 2.5, None, "ü"]},))]
    assert tools.counters.done == 2 and tools.counters.failed == 0


def test_a_tool_that_raises_raises_tool_error_in_the_cell_and_the_repl_goes_on(
    open_session: OpenSession, tool_handler: Handler
) -> None:
    session = open_session("ctx", tools=tool_handler(MemoryJournals()))
    code = "try:\n    fails('no such rate')\nexcept ToolError as exc:\n    print(exc)"
    caught = run(session, code)
    assert caught.stdout == "fails raised ValueError: no such rate\n"
    uncaught = run(session, "before = 1\nfails('again')\nafter = 2")
    assert uncaught.error is not None
    assert "ToolError: fails raised ValueError: again" in uncaught.error
    assert run(session, "print(before, 'after' in dir())").stdout == "1 False\n"


def test_a_tool_that_times_out_raises_in_the_cell_at_its_limit(
    open_session: OpenSession, tool_handler: Handler
) -> None:
    tools = tool_handler(MemoryJournals())
    session = open_session("ctx", tools=tools)
    started = time.monotonic()
    out = run(session, "slow()")
    took = time.monotonic() - started
    assert out.error is not None
    assert "ToolError: slow did not finish within its 0.5 s limit" in out.error
    assert took < SLOW_S  # the cell did not wait for the tool
    assert run(session, "print(add(1, 1))").stdout == "2\n"
    assert tools.counters.failed == 1


def test_bad_arguments_and_results_are_refused_with_a_reason(
    open_session: OpenSession, tool_handler: Handler, calls: Calls
) -> None:
    session = open_session("ctx", tools=tool_handler(MemoryJournals()))
    # Not JSON: refused in the cell, before anything is sent
    not_sent = run(session, "add(object(), 1)")
    assert not_sent.error is not None and "add() takes JSON values only" in not_sent.error
    # Not the tool's signature: refused on the host, before the tool runs
    missing = run(session, "add(1)")
    assert missing.error is not None
    refusal = "ToolError: add(a: int, b: int) -> int: missing a required argument: 'b'"
    assert refusal in missing.error
    # A result JSON cannot carry
    result = run(session, "not_json()")
    assert result.error is not None and "not_json returned a value that is not JSON" in result.error
    assert calls.seen == []


def test_hostile_requests_are_refused_on_the_host(
    open_session: OpenSession, tool_handler: Handler, calls: Calls
) -> None:
    # Given model code that digs the wire client out of a tool and sends what it likes
    session = open_session("ctx", tools=tool_handler(MemoryJournals()))
    run(
        session,
        "import sandbox.wire as w\n"
        "client = next(c.cell_contents for c in add.__closure__ "
        "if hasattr(c.cell_contents, 'exchange'))\n"
        "def send(name, arguments):\n"
        "    request = w.ToolRequest(seq=client.next_seq(), id=w.new_id(), name=name, "
        "arguments=arguments)\n"
        "    (result,) = client.exchange(request)\n"
        "    print(result.ok, result.text[:120])\n",
    )
    cases = {
        "send('add', '[1, 2')": "False add: its arguments are not JSON",
        "send('add', '[1, 2]')": "False add: malformed call",
        "send('nope', '{\"args\": [], \"kwargs\": {}}')": "False there is no tool named 'nope'",
        "send('add', '{\"args\": [' + '[' * 100000 + ']' * 100000 + '], \"kwargs\": {}}')": (
            "False add: its arguments are not JSON"
        ),
        "send('add', '{\"args\": [\"' + 'x' * 2_000_000 + '\"], \"kwargs\": {}}')": (
            "False add: its arguments are 2,000,028 bytes of JSON, more than the 1,048,576"
        ),
        "send('add', '{\"args\": [' + '9' * 5000 + ', 1], \"kwargs\": {}}')": (
            "False add: its arguments are not JSON"
        ),
    }
    for code, expected in cases.items():
        out = run(session, code)
        assert out.error is None, out.error
        assert out.stdout.startswith(expected), (code, out.stdout)
    assert calls.seen == []


def test_a_journaled_tool_result_is_given_back_without_running_the_tool(
    open_session: OpenSession, tool_handler: Handler, calls: Calls
) -> None:
    # Given a run of a job that called a tool, and one that failed
    journals = MemoryJournals()
    code = "print(add(20, 22))\ntry:\n    fails('x')\nexcept ToolError as exc:\n    print(exc)"
    first = run(open_session("ctx", tools=tool_handler(journals)), code)
    assert calls.seen == [("add", (20, 22)), ("fails", ("x",))]
    # When the job runs again over its journal (its worker died), in a fresh sandbox
    second = run(open_session("ctx", tools=tool_handler(journals)), code)
    # Then the cell sees the same results, and neither tool ran again
    assert second.stdout == first.stdout == "42\nfails raised ValueError: x\n"
    assert len(calls.seen) == 2


@pytest.fixture
def pool(services: SandboxServices, settings: Settings, backend_name: str) -> Iterator[SandboxPool]:
    pool = SandboxPool(services, create_backend(settings, backend_name), size=1)
    yield pool
    pool.close()
    services.janitor.drain(30)


def test_a_pooled_sandbox_learns_its_tools_with_its_context(
    pool: SandboxPool,
    services: SandboxServices,
    redis_client: redis.Redis,
    tool_handler: Handler,
) -> None:
    assert pool.wait_full(60)
    ref = put_context(redis_client, "pooled")
    tools = tool_handler(MemoryJournals())
    with SandboxSession(services, pool.backend, ref, answer_from_text, pool=pool, tools=tools) as s:
        assert s.from_pool
        assert run(s, "print(context, add(3, 4))").stdout == "pooled 7\n"


def test_a_live_sandbox_takes_another_context_and_keeps_its_variables(
    open_session: OpenSession, redis_client: redis.Redis, tool_handler: Handler
) -> None:
    session = open_session("first", tools=tool_handler(MemoryJournals()))
    run(session, "kept = context.upper()")
    session.load_context(put_context(redis_client, ["second"]), index=1, seed=7)
    out = run(session, "import random\nprint(kept, context, context_0, context_1, add(1, 2))")
    assert out.stdout == "FIRST ['second'] first ['second'] 3\n"
    # random is seeded again with the new seed, as a fresh sandbox seeded with it would be
    draw = run(session, "print(random.random())").stdout
    import random

    assert draw == f"{random.Random(7).random()}\n"


def test_the_most_tools_with_the_longest_docs_reach_fresh_and_pooled_sandboxes(
    open_session: OpenSession,
    pool: SandboxPool,
    services: SandboxServices,
    redis_client: redis.Redis,
    settings: Settings,
) -> None:
    # 64 tools with 8,000-character docstrings: a bootstrap, and a LoadContext sent by
    # reference to its stored copy (it is larger than a pub/sub payload)
    def numbered(n: int) -> Callable[[], int]:
        return lambda: n

    many = ToolSet.from_mapping(
        {f"tool_{n}": {"tool": numbered(n), "description": "d" * 8_000} for n in range(64)}
    )
    toolbox = Toolbox.build(many, settings)
    journals = MemoryJournals()

    def handler() -> ToolCallsForJob:
        return ToolCallsForJob(
            toolbox=toolbox, job_id="many", journal=journals.open("many"), calls=journals.calls,
            trajectory=Trajectory(), report=lambda: None, handover=lambda: None,
        )  # fmt: skip

    fresh = open_session("ctx", tools=handler())
    assert run(fresh, "print(tool_0() + tool_63(), len(tool_5.__doc__))").stdout == "63 8010\n"
    assert pool.wait_full(60)
    ref = put_context(redis_client, "pooled")
    with SandboxSession(
        services, pool.backend, ref, answer_from_text, pool=pool, tools=handler()
    ) as pooled:
        assert pooled.from_pool
        assert run(pooled, "print(tool_7())").stdout == "7\n"
