"""Library mode's private redis-server dies with the process that started it, however it ends.

Each owner is a real process (tests/integration/private_redis_owner.py); what it started is
found afterwards in /proc by the server's directory, which is on the command line of both
the server and its guard.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import ROOT, pids_mentioning, wait_for

pytestmark = pytest.mark.timeout(180)

# A server is stopped within the guard's poll plus a graceful stop; this is ample.
GONE_WITHIN_S = 10.0


class Owner:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.private_redis_owner", *args],
            cwd=ROOT,
            env={"PATH": os.environ.get("PATH", "")},  # no RLM_JOBS_REDIS_URL: a private server
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def report(self, timeout_s: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=timeout_s)
            assert self.proc.stderr is not None
            errors = self.proc.stderr.read()[-3000:]
            raise AssertionError(f"the owner reported nothing:\n{errors!r}")
        report: dict[str, Any] = json.loads(line)
        return report

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)  # the owner only: its fork child lives on
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def owners() -> Iterator[list[Owner]]:
    started: list[Owner] = []
    yield started
    for owner in started:
        owner.close()


def start_owner(owners: list[Owner], *args: str) -> tuple[Owner, dict[str, Any], list[str]]:
    owner = Owner(*args)
    owners.append(owner)
    report = owner.report()
    workdirs = [str(w) for w in report["workdirs"]]
    return owner, report, workdirs


def assert_running(workdirs: list[str]) -> None:
    for workdir in workdirs:
        assert pids_mentioning(workdir), f"no redis-server running in {workdir}"


def assert_servers_gone(workdirs: list[str]) -> None:
    for workdir in workdirs:
        wait_for(lambda w=workdir: not pids_mentioning(w), GONE_WITHIN_S, f"{workdir}'s server")
        wait_for(lambda w=workdir: not Path(w).exists(), GONE_WITHIN_S, f"{workdir} to be removed")


def test_the_server_dies_with_an_owner_killed_by_sigkill(owners: list[Owner]) -> None:
    owner, _, workdirs = start_owner(owners, "sleep")
    assert_running(workdirs)
    owner.kill()
    assert_servers_gone(workdirs)


def test_the_server_dies_with_an_owner_that_leaves_by_os_exit(owners: list[Owner]) -> None:
    owner, _, workdirs = start_owner(owners, "os-exit")
    assert owner.proc.wait(timeout=30) == 0
    assert_servers_gone(workdirs)


def test_fork_children_neither_stop_nor_keep_alive_their_parent_s_server(
    owners: list[Owner],
) -> None:
    owner, report, workdirs = start_owner(owners, "fork-then-sleep")
    assert report["answers_after_child_stop"] is True  # a child's stop() left it running
    assert_running(workdirs)
    owner.kill()
    # The second child still runs and holds a copy of the server: the server ended anyway.
    os.kill(report["child"], 0)
    assert_servers_gone(workdirs)


def test_process_pool_workers_running_jobs_leave_no_server(owners: list[Owner]) -> None:
    with ScriptedProvider() as provider:
        owner, report, workdirs = start_owner(owners, "process-pool", provider.url)
        assert owner.proc.wait(timeout=60) == 0
    rows = report["rows"]
    assert len(rows) == 8
    assert [r["answer"] for r in rows] == [r["expected"] for r in rows]
    assert 1 <= len(workdirs) <= 2  # one server per pool worker, each its own
    assert_servers_gone(workdirs)
