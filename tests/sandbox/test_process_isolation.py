"""Hostile cells against the process backend: each is contained, and a neighbour is unaffected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rlm_jobs.config import Settings
from rlm_jobs.contexts import put_context
from rlm_jobs.errors import ConfigError
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.sandboxes.backends.process import ProcessBackend
from rlm_jobs.sandboxes.backends.process.sandbox import ProcessSandbox
from rlm_jobs.sandboxes.session import SandboxSession
from sandbox import runtime
from tests.support import MakeServices, OpenSession, answer_from_text, eventually


@pytest.fixture
def backend_name() -> str:
    return "process"


def run(session: Any, code: str, timeout_s: float = 30.0) -> Any:
    return session.run_cell(code, timeout_s=timeout_s, max_output_chars=20_000)


@pytest.fixture
def neighbour(open_session: OpenSession) -> Iterator[Callable[[], None]]:
    """An honest job running while the attack runs; call the result to check it was fine."""
    session = open_session(["doc one", "doc two"])
    run(session, "total = 0")
    results: list[Any] = []
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            code = "total += sum(range(100_000))\nprint(len(context), llm_query('ok'))"
            results.append(run(session, code, timeout_s=20))

    thread = threading.Thread(target=work)
    thread.start()

    def check() -> None:
        assert eventually(lambda: len(results) >= 2, timeout_s=30)
        stop.set()
        thread.join(timeout=30)
        assert results and all(r.stdout == "2 llm/default: OK\n" for r in results), results
        assert not any(r.error or r.sandbox_replaced for r in results)

    yield check
    stop.set()
    thread.join(timeout=30)


def test_no_network_egress(
    open_session: OpenSession, redis_server: RedisServer, neighbour: Any
) -> None:
    code = (
        "import socket\n"
        f"targets = [('127.0.0.1', {redis_server.port}), ('127.0.0.1', 6379), ('192.0.2.1', 80)]\n"
        "for addr in targets:\n"
        "    s = socket.socket()\n"
        "    s.settimeout(3)\n"
        "    try:\n"
        "        s.connect(addr)\n"
        "        print('CONNECTED', addr)\n"
        "    except OSError as exc:\n"
        "        print(addr[0], addr[1], exc.strerror)\n"
        "print([name for _, name in socket.if_nameindex()])"
    )
    out = run(open_session(), code)
    assert "CONNECTED" not in out.stdout
    assert f"127.0.0.1 {redis_server.port} Connection refused" in out.stdout
    assert "192.0.2.1 80 Network is unreachable" in out.stdout
    assert "['lo']" in out.stdout
    neighbour()


def test_no_secrets_in_the_environment_or_other_processes(
    open_session: OpenSession, monkeypatch: pytest.MonkeyPatch, neighbour: Any
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-orchestrator-secret")
    monkeypatch.setenv("RLM_JOBS_ANTHROPIC_API_KEY", "sk-ant-orchestrator-secret")
    code = (
        "import os\n"
        "print(sorted(os.environ))\n"
        "print(os.environ.get('OPENAI_API_KEY'))\n"
        f"for pid in ['1', 'self', '{os.getpid()}'] + os.listdir('/proc'):\n"
        "    try:\n"
        "        data = open(f'/proc/{pid}/environ', 'rb').read()\n"
        "        print(pid, data.replace(b'\\0', b' ')[:500])\n"
        "    except OSError as exc:\n"
        "        print(pid, type(exc).__name__)\n"
        "print(sorted(p for p in os.listdir('/proc') if p.isdigit()))"
    )
    out = run(open_session(), code)
    assert "secret" not in out.stdout and "secret" not in out.stderr
    assert "1 PermissionError" in out.stdout  # bwrap's pid 1 belongs to root
    assert f"{os.getpid()} FileNotFoundError" in out.stdout  # the orchestrator is invisible
    assert "['1', '2']" in out.stdout  # only bwrap's reaper and the runtime
    neighbour()


def test_host_files_are_out_of_reach(open_session: OpenSession, neighbour: Any) -> None:
    code = (
        "import os\n"
        "print(sorted(os.listdir('/')))\n"
        "for path in ['/root/.bashrc', '/etc/shadow', '/etc/passwd', '/home', "
        "'/var/run/docker.sock', '/work/main/pyproject.toml', '/proc/1/root/etc/hostname']:\n"
        "    try:\n"
        "        print(path, 'READ', open(path).read(50))\n"
        "    except OSError as exc:\n"
        "        print(path, type(exc).__name__)\n"
        "for path in ['/usr/evil', '/opt/rlm/sandbox/evil.py', '/opt/python/evil']:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        print(path, 'WROTE')\n"
        "    except OSError as exc:\n"
        "        print(path, exc.strerror)\n"
        "print(os.getuid(), os.getcwd())"
    )
    out = run(open_session(), code)
    assert "READ" not in out.stdout and "WROTE" not in out.stdout
    assert (
        "['bin', 'dev', 'lib', 'lib64', 'opt', 'proc', 'run', 'sbin', 'scratch', 'tmp', 'usr']"
        in (out.stdout)
    )
    assert "/opt/rlm/sandbox/evil.py Read-only file system" in out.stdout
    uid, cwd = out.stdout.strip().splitlines()[-1].split()
    assert int(uid) not in (0, os.getuid()) and cwd == "/scratch"
    neighbour()


def test_signals_cannot_reach_outside(open_session: OpenSession, neighbour: Any) -> None:
    code = (
        "import os, signal\n"
        f"for pid in [1, {os.getpid()}]:\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "        print(pid, 'KILLED')\n"
        "    except OSError as exc:\n"
        "        print(pid, type(exc).__name__)"
    )
    out = run(open_session(), code)
    assert "KILLED" not in out.stdout
    neighbour()


def test_scratch_space_is_limited(open_session: OpenSession, neighbour: Any) -> None:
    code = (
        "chunk = b'x' * (1 << 20)\n"
        "written = 0\n"
        "try:\n"
        "    with open('/tmp/fill', 'wb') as f:\n"
        "        for _ in range(1024):\n"
        "            f.write(chunk)\n"
        "            written += 1\n"
        "except OSError as exc:\n"
        "    print('stopped after', written, 'MB:', exc.strerror)\n"
    )
    out = run(open_session(), code)
    assert "stopped after" in out.stdout
    assert "No space left on device" in out.stdout or "File too large" in out.stdout
    written = int(out.stdout.split("stopped after ")[1].split()[0])
    assert written <= 256
    neighbour()


def test_a_fork_bomb_is_contained(open_session: OpenSession, neighbour: Any) -> None:
    session = open_session()
    code = (
        "import os, time\n"
        "children = 0\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            while True:\n"
        "                try:\n"
        "                    os.fork()\n"
        "                except OSError:\n"
        "                    time.sleep(0.05)\n"
        "        children += 1\n"
        "    except OSError as exc:\n"
        "        print('fork refused after', children, 'children:', exc.strerror)\n"
        "        break\n"
    )
    out = run(session, code, timeout_s=20)
    assert "fork refused" in out.stdout and "Resource temporarily unavailable" in out.stdout
    assert not out.sandbox_replaced
    neighbour()
    process = session.process
    session.close()
    # Teardown runs in the background after close().
    assert process is not None and eventually(lambda: not process.alive())


def test_a_memory_bomb_gets_a_memory_error(open_session: OpenSession, neighbour: Any) -> None:
    session = open_session()
    code = "hog = []\nwhile True:\n    hog.append(b'x' * (50 << 20))"
    out = run(session, code)
    assert out.error is not None and "MemoryError" in out.error
    assert not out.sandbox_replaced
    assert run(session, "del hog\nprint('recovered')").stdout == "recovered\n"
    neighbour()


def test_memory_spread_over_processes_hits_the_cgroup_limit(
    open_session: OpenSession, neighbour: Any
) -> None:
    # Each child stays under its own address-space limit; together they pass the cgroup's.
    code = (
        "import os, time\n"
        "pids = []\n"
        "for _ in range(3):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = b'x' * (700 << 20)\n"
        "        time.sleep(3)\n"
        "        os._exit(0)\n"
        "    pids.append(pid)\n"
        "for pid in pids:\n"
        "    _, status = os.waitpid(pid, 0)\n"
        "    print('child', 'killed by signal' if os.WIFSIGNALED(status) else 'exited', "
        "os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))\n"
    )
    out = run(open_session(), code, timeout_s=60)
    if out.sandbox_replaced:  # the OOM killer may pick the runtime itself
        assert out.error is not None and "out of memory" in out.error
    else:
        assert "child killed by signal 9" in out.stdout
    neighbour()


def test_a_spinning_cell_does_not_starve_its_neighbour(
    open_session: OpenSession, neighbour: Any
) -> None:
    code = (
        "import threading\n"
        "def spin():\n"
        "    while True:\n"
        "        pass\n"
        "for _ in range(4):\n"
        "    threading.Thread(target=spin, daemon=True).start()\n"
        "import time\n"
        "time.sleep(5)"
    )
    out = run(open_session(), code, timeout_s=3)
    assert out.timed_out
    neighbour()


def test_without_bubblewrap_the_backend_refuses_to_start(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="bubblewrap not found"):
        ProcessBackend(settings, bwrap_path="/nonexistent/bwrap")


def test_unsafe_mode_must_be_asked_for_and_is_logged(
    settings: Settings,
    make_services: MakeServices,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-orchestrator-secret")
    unsafe = settings.model_copy(update={"sandbox_allow_unsafe": True})
    backend = ProcessBackend(unsafe, bwrap_path="/nonexistent/bwrap")
    assert not backend.isolated
    assert "UNSAFE SANDBOX" in caplog.text
    ref = put_context(redis_client, "plain")
    with SandboxSession(make_services(unsafe), backend, ref, answer_from_text) as session:
        out = run(
            session, "import os\nprint(context, llm_query('q'), 'OPENAI_API_KEY' in os.environ)"
        )
        assert out.stdout == "plain llm/default: Q False\n"
        died = run(session, "os._exit(4)")
        assert died.sandbox_replaced and died.error and "exited with code 4" in died.error


def test_cgroups_are_removed_with_the_sandbox(open_session: OpenSession) -> None:
    session = open_session()
    sandbox_id = session.sandbox_id
    own = Path("/proc/self/cgroup").read_text()
    if "pids:" not in own or not os.access("/sys/fs/cgroup/pids", os.W_OK):
        pytest.skip("this host gives us no writable cgroup v1 pids controller")
    found = list(Path("/sys/fs/cgroup").glob(f"*/**/rlm-sbx-{sandbox_id}"))
    assert {p.parts[4] for p in found} == {"memory", "pids", "cpu"}
    pids_dir = next(p for p in found if p.parts[4] == "pids")
    members = [int(p) for p in (pids_dir / "cgroup.procs").read_text().split()]
    assert len(members) >= 3  # bwrap, its reaper, the runtime
    session.close()
    # Teardown runs in the background after close().
    assert eventually(lambda: not any(p.exists() for p in found))
    for pid in members:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        )


def test_no_new_user_namespaces_but_threads_and_processes_work(
    open_session: OpenSession, neighbour: Any
) -> None:
    code = (
        "import ctypes, os, subprocess, threading\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('unshare', libc.unshare(0x10000000), os.strerror(ctypes.get_errno()))\n"
        "print(subprocess.run(['/usr/bin/unshare', '-U', '-r', 'id'], capture_output=True,"
        " text=True).returncode)\n"
        "t = threading.Thread(target=print, args=('thread ok',))\n"
        "t.start()\n"
        "t.join()\n"
        "child = subprocess.run(['sh', '-c', 'echo child ok'], capture_output=True, text=True)\n"
        "print(child.stdout)"
    )
    out = run(open_session(), code)
    assert "unshare -1 Operation not permitted\n1\n" in out.stdout
    assert "thread ok" in out.stdout and "child ok" in out.stdout
    neighbour()


ORCHESTRATOR = """
import json, sys
import redis
from rlm_jobs.config import Settings
from rlm_jobs.contexts import put_context
from rlm_jobs.sandboxes.backends.process import ProcessBackend
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.session import SandboxSession
from tests.support import answer_from_text

client = redis.Redis.from_url(sys.argv[1])
settings = Settings(sandbox_redis_socket=sys.argv[2])
ref = put_context(client, "x")
services = SandboxServices(client, settings)
session = SandboxSession(services, ProcessBackend(settings), ref, answer_from_text)
print(json.dumps({"id": session.sandbox_id}), flush=True)
sys.stdin.read()
"""


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_sandboxes_die_with_their_orchestrator(redis_server: RedisServer) -> None:
    if not os.access("/sys/fs/cgroup/pids", os.W_OK):
        pytest.skip("needs cgroups to find the sandbox's processes")
    repo = Path(__file__).resolve().parents[2]
    with subprocess.Popen(
        [sys.executable, "-c", ORCHESTRATOR, redis_server.url, redis_server.unix_socket],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    ) as orchestrator:
        assert orchestrator.stdout is not None
        sandbox_id = json.loads(orchestrator.stdout.readline())["id"]
        groups = list(Path("/sys/fs/cgroup").glob(f"*/**/rlm-sbx-{sandbox_id}"))
        pids_dir = next(p for p in groups if p.parts[4] == "pids")
        members = [int(p) for p in (pids_dir / "cgroup.procs").read_text().split()]
        assert members and all(_running(pid) for pid in members)
        orchestrator.kill()
    try:
        assert eventually(lambda: not any(_running(pid) for pid in members), timeout_s=10)
    finally:
        # A dead orchestrator cannot remove its cgroups; the next one's remove_stale would.
        for group in groups:
            _remove_when_empty(group)


def _remove_when_empty(group: Path) -> None:
    eventually(lambda: not (group / "cgroup.procs").read_text().split(), timeout_s=5)
    group.rmdir()


def _running_sandbox(open_session: OpenSession) -> ProcessSandbox:
    """The process of a fresh session that has run a cell, its lifeline (stdin) open."""
    session = open_session()
    assert run(session, "print(1 + 1)").stdout == "2\n"
    proc = session.process
    assert isinstance(proc, ProcessSandbox)
    assert proc._popen.stdin is not None and proc._popen.poll() is None
    return proc


def test_a_sandbox_whose_host_end_of_stdin_closes_exits(open_session: OpenSession) -> None:
    # The stdin lifeline: what a host killed while bwrap was still starting leaves behind
    # (bwrap alive, --die-with-parent never armed) is a closed pipe, and the runtime must
    # end on that alone
    proc = _running_sandbox(open_session)
    popen = proc._popen
    assert popen.stdin is not None
    popen.stdin.close()
    assert eventually(lambda: popen.poll() is not None, timeout_s=10)
    assert popen.returncode == runtime.EXIT_PARENT_LOST, proc.describe_exit()


def test_a_forked_child_of_the_host_does_not_keep_its_sandboxes_alive(
    open_session: OpenSession,
) -> None:
    # Given a host process that forks (multiprocessing in a library user's program)
    proc = _running_sandbox(open_session)
    popen = proc._popen
    assert popen.stdin is not None
    hold, release = os.pipe()
    child = os.fork()
    if child == 0:  # the child lives on, doing nothing, until told
        os.read(hold, 1)
        os._exit(0)
    try:
        # When the host's own end closes (as when the host dies) while the child lives
        popen.stdin.close()
        # Then the sandbox ends all the same: the child held no copy of the lifeline
        assert eventually(lambda: popen.poll() is not None, timeout_s=10)
        assert popen.returncode == runtime.EXIT_PARENT_LOST, proc.describe_exit()
    finally:
        os.write(release, b"x")
        os.waitpid(child, 0)
        os.close(hold)
        os.close(release)


def test_a_fork_after_a_sandbox_ended_drops_the_live_lifelines_and_reports_nothing(
    open_session: OpenSession,
) -> None:
    # Given a sandbox that ended (its lifeline closed) and one still running
    _running_sandbox(open_session).kill()
    live = _running_sandbox(open_session)
    assert live._popen.stdin is not None
    lifeline = live._popen.stdin.fileno()
    # When the host forks (as every sandbox launch does: subprocess runs the fork handlers
    # in its child when given a preexec_fn)
    read_end, write_end = os.pipe()

    def report(unraisable: Any) -> None:
        os.write(write_end, b"raised ")

    previous = sys.unraisablehook
    sys.unraisablehook = report
    try:
        child = os.fork()
        if child == 0:
            dropped = os.path.samestat(os.fstat(lifeline), os.stat(os.devnull))
            os.write(write_end, b"dropped" if dropped else b"kept")
            os._exit(0)
    finally:
        sys.unraisablehook = previous
    os.waitpid(child, 0)
    os.close(write_end)
    try:
        # Then the child's copy of the live lifeline points at /dev/null, and the handler
        # raised nothing: what it raises is printed, and printing takes a lock another
        # thread may hold at the fork (the child then hangs before its exec)
        assert os.read(read_end, 100) == b"dropped"
    finally:
        os.close(read_end)
    # ... while the host's own end is untouched
    assert live.alive() and not os.path.samestat(os.fstat(lifeline), os.stat(os.devnull))
