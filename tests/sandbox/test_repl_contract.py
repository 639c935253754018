"""The REPL contract (names, output, errors, limits) that every sandbox backend must keep."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sandbox.records import SubcallResult
from sandbox.wire import SubcallRequest
from tests.support import OpenSession

LIMIT = 2000


def run(session: Any, code: str, timeout_s: float = 20.0, limit: int = LIMIT) -> Any:
    return session.run_cell(code, timeout_s=timeout_s, max_output_chars=limit)


def test_variables_persist_across_cells(open_session: OpenSession) -> None:
    session = open_session()
    assert run(session, "x = 41").error is None
    out = run(session, "x += 1\nprint(x)")
    assert out.stdout == "42\n"
    assert out.error is None and out.final is None and not out.timed_out


@pytest.mark.parametrize(
    ("context", "check"),
    [
        ("some text", "print(type(context).__name__, len(context))"),
        (["a", "bb", "ccc"], "print(type(context).__name__, len(context))"),
        ({"k": [1, 2], "j": "v"}, "print(type(context).__name__, len(context))"),
    ],
)
def test_context_keeps_its_json_shape(open_session: OpenSession, context: Any, check: str) -> None:
    session = open_session(context)
    assert run(session, check).stdout == f"{type(context).__name__} {len(context)}\n"


def test_last_expression_is_not_echoed(open_session: OpenSession) -> None:
    out = run(open_session(), "1 + 1")
    assert out.stdout == "" and out.error is None


def test_long_output_is_cut_with_a_note_saying_how_much(open_session: OpenSession) -> None:
    session = open_session()
    out = run(session, "print('a' * 5000)\nimport sys\nsys.stderr.write('e' * 300)", limit=1000)
    assert out.stdout.startswith("a" * 1000 + "\n")
    assert "4,001 more characters were cut" in out.stdout
    assert "aaaa" not in out.stdout[1001:]
    assert out.stderr == "e" * 300


def test_a_large_result_travels_by_reference(open_session: OpenSession) -> None:
    out = run(open_session(), "print('y' * 150_000)", limit=200_000)  # > the 64 KB inline limit
    assert out.stdout == "y" * 150_000 + "\n"


def test_print_loops_do_not_grow_memory_or_time(open_session: OpenSession) -> None:
    out = run(open_session(), "for i in range(200_000):\n    print(i)", limit=100)
    assert "more characters were cut" in out.stdout
    assert out.error is None


def test_an_exception_returns_the_traceback_and_keeps_earlier_variables(
    open_session: OpenSession,
) -> None:
    session = open_session()
    out = run(session, "a = 1\nprint('before')\nraise ValueError('boom')\nb = 2")
    assert out.stdout == "before\n"
    assert out.error is not None
    assert "Traceback" in out.error and "ValueError: boom" in out.error
    assert "raise ValueError('boom')" in out.error  # the model sees its own line
    assert "repl.py" not in out.error  # and none of ours
    assert run(session, "print(a, 'b' in globals())").stdout == "1 False\n"


def test_a_syntax_error_is_reported(open_session: OpenSession) -> None:
    out = run(open_session(), "def broken(:\n    pass")
    assert out.error is not None and "SyntaxError" in out.error


def test_system_exit_in_a_cell_is_an_error_not_an_exit(open_session: OpenSession) -> None:
    session = open_session()
    out = run(session, "import sys\nsys.exit(3)")
    assert out.error is not None and "SystemExit" in out.error
    assert run(session, "print('alive')").stdout == "alive\n"


def test_reserved_names_are_restored(open_session: OpenSession) -> None:
    session = open_session("the context")
    out = run(session, "llm_query = None\ncontext = 'mine'\ndel FINAL\nSHOW_VARS = 3")
    assert "restored" in out.stderr
    for name in ("llm_query", "context", "FINAL", "SHOW_VARS"):
        assert name in out.stderr
    check = run(
        session, "print(callable(llm_query), callable(FINAL), callable(SHOW_VARS), context)"
    )
    assert check.stdout == "True True True the context\n"


def test_show_vars_lists_user_variables_only(open_session: OpenSession) -> None:
    session = open_session()
    run(session, "alpha = 1\nbeta = [1, 2, 3]\n_hidden = 0")
    shown = run(session, "print(SHOW_VARS())").stdout
    assert "alpha: int" in shown and "beta: list (len 3)" in shown
    assert "_hidden" not in shown and "context" not in shown and "llm_query" not in shown


def test_finish_by_setting_answer_ready(open_session: OpenSession) -> None:
    session = open_session()
    out = run(session, "answer['content'] = 'half'")
    assert out.final is None and out.partial == "half"
    out = run(session, "answer['content'] = 'the answer'\nanswer['ready'] = True")
    assert out.final == "the answer"


def test_rebinding_answer_to_a_ready_dict_is_honoured_then_restored(
    open_session: OpenSession,
) -> None:
    session = open_session()
    out = run(session, "answer = {'content': 42, 'ready': True}")
    assert out.final == "42"
    assert "answer" in out.stderr  # the restore note
    after = run(session, "print(answer)")
    assert after.stdout == "{'content': '', 'ready': False}\n" and after.final is None


def test_finish_with_final(open_session: OpenSession) -> None:
    session = open_session()
    assert run(session, "FINAL('done')").final == "done"
    assert run(session, "FINAL(6 * 7)").final == "42"


def test_finish_with_final_var(open_session: OpenSession) -> None:
    session = open_session()
    run(session, "result = {'n': 3}")
    assert run(session, "FINAL_VAR('result')").final == "{'n': 3}"


def test_final_var_of_a_missing_variable_does_not_finish(open_session: OpenSession) -> None:
    session = open_session()
    out = run(session, "r = FINAL_VAR('missing')\nprint('got:', r)")
    assert out.final is None and out.error is None
    assert "got: Error:" in out.stdout and "'missing'" in out.stdout
    assert run(session, "FINAL_VAR(123)").final is None


def test_llm_query_returns_text(open_session: OpenSession) -> None:
    out = run(open_session(), "print(llm_query('hi'))\nprint(llm_query('yo', model='m/x'))")
    assert out.stdout == "llm/default: HI\nllm/m/x: YO\n"


def test_llm_query_batched_keeps_order_and_isolates_failures(open_session: OpenSession) -> None:
    code = "r = llm_query_batched(['sleep:0.3:first', 'fail second', 'third'])\nprint(r)"
    out = run(open_session(), code)
    assert out.error is None
    assert out.stdout == (
        "['llm/default: SLEEP:0.3:FIRST', \"Error: refused 'fail second'\", 'llm/default: THIRD']\n"
    )


def test_a_failed_single_query_returns_an_error_string(open_session: OpenSession) -> None:
    out = run(open_session(), "r = llm_query('fail now')\nprint(r.startswith('Error'))")
    assert out.stdout == "True\n" and out.error is None


def test_rlm_query_goes_out_as_an_rlm_request(open_session: OpenSession) -> None:
    code = "print(rlm_query('task', model='a/b'))\nprint(rlm_query_batched(['x', 'y']))"
    out = run(open_session(), code)
    assert out.stdout == "rlm/a/b: TASK\n['rlm/default: X', 'rlm/default: Y']\n"


def test_an_empty_batch_needs_no_round_trip(open_session: OpenSession) -> None:
    assert run(open_session(), "print(llm_query_batched([]))").stdout == "[]\n"


@pytest.mark.parametrize(
    "call",
    [
        "llm_query(1)",
        "llm_query(['a'])",
        "llm_query('a', model=3)",
        "llm_query_batched('abc')",
        "llm_query_batched(['a', 2])",
        "rlm_query_batched(None)",
    ],
)
def test_wrong_argument_types_raise_type_error(open_session: OpenSession, call: str) -> None:
    out = run(open_session(), call)
    assert out.error is not None and "TypeError" in out.error


def test_a_failing_handler_gives_error_strings_not_a_crash(open_session: OpenSession) -> None:
    def broken(request: SubcallRequest) -> list[SubcallResult]:
        raise RuntimeError("dispatcher down")

    out = run(open_session(handler=broken), "print(llm_query_batched(['a', 'b']))")
    assert out.error is None
    assert out.stdout.count("Error: the sub-call failed: RuntimeError: dispatcher down") == 2


def test_queries_from_model_threads_run_concurrently(open_session: OpenSession) -> None:
    code = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "def ask(i):\n"
        "    print('asking', i)\n"
        "    return llm_query(f'sleep:0.5:q{i}')\n"
        "with ThreadPoolExecutor(4) as pool:\n"
        "    answers = list(pool.map(ask, range(4)))\n"
        "print(answers)"
    )
    session = open_session()
    started = time.monotonic()
    out = run(session, code)
    assert out.error is None
    assert time.monotonic() - started < 1.8  # four 0.5 s calls, served in parallel
    assert out.stdout.count("asking") == 4  # prints from the model's threads are captured
    assert "'llm/default: SLEEP:0.5:Q3'" in out.stdout


def test_a_slow_cell_is_interrupted_and_keeps_its_variables(open_session: OpenSession) -> None:
    session = open_session()
    started = time.monotonic()
    out = run(session, "import time\nx = 1\ntime.sleep(30)\nx = 2", timeout_s=1.0)
    assert time.monotonic() - started < 5
    assert out.timed_out and not out.sandbox_replaced
    assert out.error is not None and "1 s limit" in out.error
    assert run(session, "print(x)").stdout == "1\n"


def test_catching_exception_does_not_swallow_the_timeout(open_session: OpenSession) -> None:
    code = (
        "import time\n"
        "while True:\n"
        "    try:\n"
        "        time.sleep(10)\n"
        "    except Exception:\n"
        "        pass\n"
    )
    out = run(open_session(), code, timeout_s=1.0)
    assert out.timed_out and not out.sandbox_replaced


def test_one_bare_except_only_delays_the_timeout(open_session: OpenSession) -> None:
    code = (
        "import time\n"
        "try:\n"
        "    time.sleep(10)\n"
        "except BaseException:\n"
        "    print('caught')\n"
        "time.sleep(10)\n"
    )
    out = run(open_session(), code, timeout_s=1.0)
    assert out.timed_out and not out.sandbox_replaced and "caught" in out.stdout


@pytest.mark.parametrize(
    "code",
    [
        # Ignores the interrupt, then spins in Python.
        "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass",
        # Blocks the signal, then sleeps in C.
        "import signal, time\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])\n"
        "time.sleep(60)",
        # Swallows every interrupt forever.
        "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n"
        "        pass",
    ],
    ids=["sig-ign-spin", "sigmask-sleep", "bare-except-loop"],
)
def test_a_cell_that_defeats_the_interrupt_costs_the_sandbox(
    open_session: OpenSession, code: str
) -> None:
    session = open_session("ctx", grace_s=1.0)
    run(session, "kept = 'x'")
    old_id, old_process = session.sandbox_id, session.process
    started = time.monotonic()
    out = run(session, code, timeout_s=1.0)
    assert time.monotonic() - started < 10
    assert out.timed_out and out.sandbox_replaced
    assert out.error is not None and "killed" in out.error
    assert "variable" in out.note and "context" in out.note
    assert old_process is not None and not old_process.alive()
    assert session.sandbox_id != old_id
    after = run(session, "print(context)\nprint(kept)")
    assert after.stdout == "ctx\n" and after.error is not None and "NameError" in after.error
