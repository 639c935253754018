"""The process backend reads every sandbox's output pipe on one thread and keeps its end."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from rlm_jobs.config import Settings
from rlm_jobs.contexts import put_context
from rlm_jobs.sandboxes.backends.process.output import LOG_TAIL_BYTES
from rlm_jobs.sandboxes.registry import create_backend
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.session import SandboxSession
from tests.support import answer_from_text

pytestmark = pytest.mark.timeout(120)


def threads_named(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name)


@pytest.fixture
def sessions(
    redis_client: redis.Redis, services: SandboxServices, settings: Settings
) -> Iterator[list[SandboxSession]]:
    backend = create_backend(settings, "process")
    ref = put_context(redis_client, "ctx")
    opened = [SandboxSession(services, backend, ref, answer_from_text) for _ in range(3)]
    yield opened
    for session in opened:
        session.close()
    services.janitor.drain(30)


def test_one_thread_keeps_the_last_words_of_every_sandbox(
    sessions: list[SandboxSession],
) -> None:
    assert threads_named("rlm-sandbox-output") == 1
    for i, session in enumerate(sessions):
        code = f"import os\nos.write(2, b'last words of {i}\\n')\nos._exit(3)"
        out = session.run_cell(code, timeout_s=20, max_output_chars=5000)
        assert out.sandbox_replaced and out.error is not None
        # Each crash report quotes its own sandbox's output, and only that.
        assert "exited with code 3" in out.error and f"last words of {i}" in out.error
        assert not any(f"last words of {j}" in out.error for j in range(3) if j != i)
    assert threads_named("rlm-sandbox-output") == 1


def test_a_flood_of_output_is_drained_and_only_its_end_kept(
    sessions: list[SandboxSession],
) -> None:
    # A pipe nobody reads fills at 64 KiB and blocks the writer: this cell would time out.
    code = "import os\nfor _ in range(64):\n    os.write(1, b'x' * 16384)\nprint('flooded')"
    for session in sessions:
        out = session.run_cell(code, timeout_s=20, max_output_chars=5000)
        assert out.stdout == "flooded\n" and not out.timed_out
    crash = sessions[0].run_cell(
        "import os\nos.write(1, b'y' * 100000 + b'END')\nos._exit(4)",
        timeout_s=20,
        max_output_chars=5000,
    )
    assert crash.error is not None and "exited with code 4" in crash.error
    quoted = crash.error.split("runtime log: '", 1)[1].split("'", 1)[0]
    assert quoted.endswith("yEND") and "x" not in quoted  # the earlier flood is long gone
    assert len(quoted) <= LOG_TAIL_BYTES
