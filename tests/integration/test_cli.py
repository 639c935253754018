"""``rlm-jobs`` as users run it: a subprocess against real Redis and real Celery workers.

The workers are ``celery -A workers worker`` processes (one per queue, so orchestrators
waiting on sub-calls never hold the threads those sub-calls need), started once for this
module and answered by a ``ScriptedProvider`` in this process. Tests here do not flush
Redis (the workers' queue bindings live there); each uses its own batch and job ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from rlm_jobs.redis_server import RedisServer
from tests.support import ROOT, Stack, cli, read_jsonl, wait_for
from tests.support.tools import QUESTIONS, TABLES

pytestmark = pytest.mark.timeout(300)

NEEDLE = "scripted/needle"
QUESTION = "What is the secret code?"


def secret_docs(directory: Path, n: int) -> dict[str, str]:
    """``n`` small documents, each hiding one code; returns file name -> code."""
    directory.mkdir(parents=True, exist_ok=True)
    codes = {}
    for i in range(1, n + 1):
        name, code = f"doc-{i:02d}.txt", f"NDL-{i:02d}-{uuid.uuid4().hex[:6]}"
        filler = f"Minutes of meeting {i}. Nothing of note was decided. " * 20
        (directory / name).write_text(f"{filler}\nThe secret code is {code}.\n{filler}")
        codes[name] = code
    return codes


# ---- batches: submit, watch, collect, resubmit ---------------------------------------------


def test_a_50_document_batch_runs_end_to_end_and_resubmission_skips_finished_ones(
    stack: Stack, tmp_path: Path
) -> None:
    # Given 50 documents, each with its own secret code
    codes = secret_docs(tmp_path / "docs", 50)
    batch_id = f"cli-{uuid.uuid4().hex[:8]}"

    # When they are submitted as a batch, watched to the end and collected
    submitted = cli(
        "batch", str(tmp_path / "docs"), "-q", QUESTION, "--model", NEEDLE,
        "--batch-id", batch_id, env=stack.env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == batch_id
    assert "50 documents, 50 jobs started, 0 skipped" in submitted.stderr

    watched = cli("watch", batch_id, "--interval", "1", env=stack.env, timeout_s=240)
    assert watched.returncode == 0, watched.stderr
    summary = watched.stderr.strip().splitlines()[-1]
    assert summary.startswith("50/50 completed |") and "tokens" in summary and "$" in summary

    out = tmp_path / "results.jsonl"
    collected = cli("results", batch_id, "-o", str(out), env=stack.env)
    assert collected.returncode == 0, collected.stderr
    assert "wrote 50 rows" in collected.stderr

    # Then there is one row per document, in name order, each with its document's code
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == sorted(codes)
    assert all(r["status"] == "COMPLETED" and r["batch_id"] == batch_id for r in rows)
    assert {r["id"]: r["answer"] for r in rows} == codes
    assert all(r["usage"]["total_tokens"] > 0 and r["usage"]["cost_usd"] > 0 for r in rows)

    # And resubmitting the same batch starts nothing
    again = cli(
        "batch", str(tmp_path / "docs"), "-q", QUESTION, "--model", NEEDLE,
        "--batch-id", batch_id, env=stack.env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "0 jobs started, 50 skipped" in again.stderr

    # And status and trajectory read the same records
    batch_status = json.loads(cli("status", batch_id, env=stack.env).stdout)
    assert batch_status["kind"] == "batch"
    assert (batch_status["total"], batch_status["completed"]) == (50, 50)
    job_status = json.loads(cli("status", rows[0]["job_id"], env=stack.env).stdout)
    assert job_status["kind"] == "job" and job_status["status"] == "COMPLETED"
    assert job_status["row"]["answer"] == codes[rows[0]["id"]]

    traj = tmp_path / "trajectory.jsonl"
    exported = cli("trajectory", rows[0]["job_id"], "-o", str(traj), env=stack.env)
    assert exported.returncode == 0, exported.stderr
    entries = read_jsonl(traj)
    assert entries[0]["type"] == "metadata"
    assert [e["type"] for e in entries[1:]] == ["iteration"] * (len(entries) - 1)
    assert entries[-1]["final_answer"] == codes[rows[0]["id"]]


def test_failed_documents_are_run_again_on_resubmission(stack: Stack, tmp_path: Path) -> None:
    # Given a JSONL batch whose rows carry their own queries, and an iteration cap too low
    # for the needle policy (it needs three turns)
    batch_file = tmp_path / "batch.jsonl"
    rows = [
        {"id": "a", "text": "Notes.\nThe secret code is JSONL-A.\n"},
        {"text": "More notes.\nThe secret code is JSONL-B.\n", "query": QUESTION},
        {"id": 7, "context": ["part one", "The secret code is JSONL-C."]},
    ]
    batch_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    batch_id = f"cli-{uuid.uuid4().hex[:8]}"
    common = ["-q", QUESTION, "--model", NEEDLE, "--batch-id", batch_id]

    first = cli("batch", str(batch_file), *common, "--max-iterations", "1", env=stack.env)
    assert first.returncode == 0, first.stderr

    # When the batch is watched, it ends with failures: exit 1, statuses named
    watched = cli("watch", batch_id, "--interval", "1", env=stack.env, timeout_s=120)
    assert watched.returncode == 1, watched.stderr
    assert "0/3 completed, 3 failed (3 MAX_ITERATIONS)" in watched.stderr

    # Then a resubmission with workable limits reruns exactly those and they complete
    second = cli("batch", str(batch_file), *common, env=stack.env)
    assert "3 jobs started, 0 skipped" in second.stderr
    assert cli("watch", batch_id, env=stack.env, timeout_s=120).returncode == 0
    results = cli("results", batch_id, env=stack.env)  # -o - by default
    answers = {r["id"]: r["answer"] for r in map(json.loads, results.stdout.splitlines())}
    assert answers == {"a": "JSONL-A", "2": "JSONL-B", "7": "JSONL-C"}


def test_cancelling_a_batch_ends_its_unfinished_jobs(stack: Stack, tmp_path: Path) -> None:
    secret_docs(tmp_path / "docs", 6)
    batch_id = f"cli-{uuid.uuid4().hex[:8]}"
    # Slow root turns keep the jobs running long enough to be cancelled.
    stack.provider.configure(root_latency_s=1.0)
    try:
        submitted = cli(
            "batch", str(tmp_path / "docs"), "-q", QUESTION, "--model", NEEDLE,
            "--batch-id", batch_id, env=stack.env,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        cancelled = cli("cancel", batch_id, env=stack.env)
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"batch {batch_id}:" in cancelled.stdout and "cancelled" in cancelled.stdout
        watched = cli("watch", batch_id, "--interval", "1", env=stack.env, timeout_s=120)
    finally:
        stack.provider.configure(root_latency_s=0.0)
    assert watched.returncode == 1
    statuses = [
        json.loads(r)["status"] for r in cli("results", batch_id, env=stack.env).stdout.splitlines()
    ]
    assert "CANCELLED" in statuses and set(statuses) <= {"CANCELLED", "COMPLETED"}


def test_run_with_a_broker_uses_the_cluster_and_writes_results_to_stdout(
    stack: Stack, tmp_path: Path
) -> None:
    codes = secret_docs(tmp_path / "docs", 4)
    done = cli(
        "run", str(tmp_path / "docs"), "-q", QUESTION, "--model", NEEDLE, "-o", "-",
        "--interval", "1", env=stack.env, timeout_s=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"using the broker at redis://127.0.0.1:{stack.server.port}")
    assert "local stack" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("4/4 completed |")
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert {r["id"]: r["answer"] for r in rows} == codes


def test_batch_and_run_read_jsonl_rows_from_stdin(stack: Stack, tmp_path: Path) -> None:
    # Given JSONL rows that exist only in a pipe
    codes = {f"row-{i}": f"STD-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)}
    rows = "".join(
        json.dumps({"id": doc_id, "text": f"Notes.\nThe secret code is {code}.\nMore notes."})
        + "\n"
        for doc_id, code in codes.items()
    )
    batch_id = f"cli-{uuid.uuid4().hex[:8]}"

    # When `batch -` reads them from stdin, then the batch is watched and collected
    submitted = cli(
        "batch", "-", "-q", QUESTION, "--model", NEEDLE, "--batch-id", batch_id,
        env=stack.env, stdin=rows,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    assert "3 documents, 3 jobs started" in submitted.stderr
    assert cli("watch", batch_id, "--interval", "0.5", env=stack.env).returncode == 0
    out = tmp_path / "results.jsonl"
    assert cli("results", batch_id, "-o", str(out), env=stack.env).returncode == 0
    assert {r["id"]: r["answer"] for r in read_jsonl(out)} == codes

    # And `run -` does the same in one command, results on stdout
    ran = cli("run", "-", "-q", QUESTION, "--model", NEEDLE, "-o", "-", env=stack.env, stdin=rows)
    assert ran.returncode == 0, ran.stderr
    assert {r["id"]: r["answer"] for r in map(json.loads, ran.stdout.splitlines())} == codes


def test_a_malformed_row_on_stdin_is_named_and_nothing_is_submitted(
    broker_env: dict[str, str],
) -> None:
    batch_id = f"cli-{uuid.uuid4().hex[:8]}"
    rows = '{"id": "ok", "text": "fine"}\n{"id": "broken", "text": \n'
    done = cli("batch", "-", "-q", "q", "--batch-id", batch_id, env=broker_env, stdin=rows)
    assert done.returncode == 2
    assert "<stdin>:2: invalid JSON" in done.stderr
    assert "no job or batch" in cli("status", batch_id, env=broker_env).stderr


# ---- single jobs ---------------------------------------------------------------------------


def test_submit_wait_reads_the_context_from_stdin(stack: Stack) -> None:
    done = cli(
        "submit", "-q", QUESTION, "--context", "-", "--model", NEEDLE, "--wait",
        "--timeout", "60", env=stack.env, stdin="Notes.\nThe secret code is STDIN-7.\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["status"] == "COMPLETED" and row["answer"] == "STDIN-7"
    assert row["job_id"] and row["usage"]["calls"] > 0


def test_submit_takes_a_json_context_file_and_prints_the_job_id(
    stack: Stack, tmp_path: Path
) -> None:
    context = tmp_path / "context.json"
    context.write_text(json.dumps({"a": "nothing", "b": "The secret code is JSON-9."}))
    submitted = cli(
        "submit", "-q", QUESTION, "--context-file", str(context), "--model", NEEDLE,
        env=stack.env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()

    def finished() -> dict[str, Any] | None:
        report: dict[str, Any] = json.loads(cli("status", job_id, env=stack.env).stdout)
        return report if report["status"] == "COMPLETED" else None

    assert wait_for(finished, 60, f"job {job_id} to complete", poll_s=0.5)["row"]["answer"] == (
        "JSON-9"
    )


# ---- run: the newcomer's command -----------------------------------------------------------

# Runs a command as a child subreaper, so anything it leaves behind is reparented here and
# can be listed (and then killed) instead of escaping to init.
_ORPHAN_CHECK = r"""
import ctypes, json, os, signal, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=240)
left = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        continue
    if stat[1] == str(os.getpid()) and stat[0] != "Z":
        left.append(cmd)
        os.kill(int(pid), signal.SIGKILL)
print(json.dumps({"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
                  "left": left}))
"""


def test_run_without_a_broker_completes_the_sample_and_leaves_no_process(tmp_path: Path) -> None:
    # Given no broker and no API key: `rlm-jobs run` starts a private stack, scripted model
    out = tmp_path / "results.jsonl"
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    # When the newcomer's script runs the sample (it calls `rlm-jobs run examples/docs`)
    checked = subprocess.run(
        [sys.executable, "-c", _ORPHAN_CHECK, "bash", "examples/run_sample.sh", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=280, check=False,
    )  # fmt: skip
    report = json.loads(checked.stdout)

    # Then it succeeds, reports counts, tokens, cost and time, and leaves no process behind
    assert report["rc"] == 0, report["stderr"]
    assert report["left"] == []
    lines = report["stderr"].strip().splitlines()
    assert lines[0].startswith("starting a local stack: redis-server")
    summary = lines[-1]
    assert summary.startswith("10/10 completed |") and summary.endswith(f"results: {out}")
    assert " tokens | $" in summary and "s wall" in summary
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == sorted(p.name for p in (ROOT / "examples/docs").iterdir())
    # The scripted model answers extractively: each document's own root-cause sentence.
    for row in rows:
        assert row["status"] == "COMPLETED"
        assert "root cause of the incident was" in row["answer"]
    assert json.loads(report["stdout"].strip().splitlines()[-1]) == rows[0]


def test_the_library_mode_example_runs_offline() -> None:
    done = subprocess.run(
        [sys.executable, "examples/library_mode.py"],
        capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")}, cwd=ROOT,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("status: COMPLETED")
    assert "root cause of the incident was" in done.stdout


# ---- bad input: exit 2, one line, nothing submitted ------------------------------------------


@pytest.fixture
def broker_env(redis_server: RedisServer) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "RLM_JOBS_REDIS_URL": redis_server.url}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "-q", "q", "--context-file", "missing.txt"], "no such file: missing.txt"),
        (["submit", "-q", "q", "--context", "x", "--model", "nope/x"], "unknown provider 'nope'"),
        (["submit", "-q", "q", "--context", "x", "--model", "gpt4"], "must look like provider/"),
        (["submit", "-q", "  ", "--context", "x"], "the query is empty"),
        (["submit", "-q", "q", "--context", "x", "--max-iterations", "0"], "max_iterations"),
        (
            ["submit", "-q", "q", "--context-file", "f", "--context", "-"],
            "argument --context: not allowed with argument --context-file",
        ),
        (
            ["submit", "-q", "q"],
            "one of the arguments --context-file --context --corpus is required",
        ),
        (["batch", "missing-dir", "-q", "q"], "no such file or directory: missing-dir"),
        (["run", "missing-dir", "-q", "q"], "no such file or directory: missing-dir"),
        (["status", "no-such-id"], "no job or batch 'no-such-id'"),
        (["watch", "no-such-batch"], "no batch 'no-such-batch'"),
        (["trajectory", "no-such-job"], "no job 'no-such-job'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], message: str, broker_env: dict[str, str]
) -> None:
    done = cli(*args, env=broker_env)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""


def test_a_malformed_jsonl_line_is_named_and_nothing_is_submitted(
    tmp_path: Path, broker_env: dict[str, str]
) -> None:
    batch_file = tmp_path / "bad.jsonl"
    batch_file.write_text('{"id": "ok", "text": "fine"}\n{"id": "broken", "text": \n')
    batch_id = f"cli-{uuid.uuid4().hex[:8]}"
    done = cli("batch", str(batch_file), "-q", "q", "--batch-id", batch_id, env=broker_env)
    assert done.returncode == 2
    assert f"{batch_file}:2: invalid JSON" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "no job or batch" in cli("status", batch_id, env=broker_env).stderr


def test_commands_that_need_a_broker_say_how_to_configure_one() -> None:
    done = cli("status", "x", env={"PATH": os.environ.get("PATH", "")})
    assert done.returncode == 2
    assert "no broker configured: set RLM_JOBS_REDIS_URL" in done.stderr


def test_an_unreachable_redis_is_one_line_without_its_password() -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "RLM_JOBS_REDIS_URL": "redis://:s3cret@127.0.0.1:1/0",
    }
    done = cli("status", "x", env=env)
    assert done.returncode == 2 and "cannot reach Redis at redis://127.0.0.1:1" in done.stderr
    assert "s3cret" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_session_asked_from_the_shell_keeps_its_variables(stack: Stack) -> None:
    opened = cli("session", "open", env=stack.env)
    assert opened.returncode == 0, opened.stderr
    session_id = opened.stdout.strip()
    answers = ("17", "11", "apples, plums")
    for table, question, expected in zip(TABLES, QUESTIONS, answers, strict=True):
        done = cli(
            "submit", "--session", session_id, "-q", question, "--context", table,
            "--model", "scripted/session", "--wait", env=stack.env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["answer"] == expected
    shown = cli("session", "show", session_id, env=stack.env)
    info = json.loads(shown.stdout)
    assert (info["status"], len(info["jobs"]), info["busy"]) == ("open", 3, None)
    ended = cli("session", "end", session_id, env=stack.env)
    assert ended.stdout.strip() == f"session {session_id}: ended"
    refused = cli("submit", "--session", session_id, "-q", "x", "--context", "y", env=stack.env)
    assert refused.returncode == 2
    assert "has ended (ended on request)" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "command", [[], ["submit"], ["batch"], ["status"], ["watch"], ["results"], ["cancel"],
                ["trajectory"], ["run"], ["session"], ["session", "open"], ["session", "end"]]
)  # fmt: skip
def test_every_command_has_help(command: list[str]) -> None:
    done = cli(*command, "--help", env={"PATH": os.environ.get("PATH", "")})
    assert done.returncode == 0 and "usage: rlm-jobs" in done.stdout
