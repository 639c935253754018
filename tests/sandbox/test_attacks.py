"""The attack suite: hostile model code in real jobs on real workers, on both backends.

Each attack is the one cell of a job: the scripted ``exec`` model "writes" the job's query
(``tests/sandbox/attacks.py``) as its code, then answers with what the cell printed. While
it runs, an honest needle job runs beside it on the same orchestrator; that job's
sub-model is a gate the test opens only after the attack is over, so the neighbour is
provably alive (sandbox up, channels subscribed) for the whole attack. (Against the CPU
spinners the gate opens as the attack's cell starts: the neighbour must finish while the
attack still spins.) Then:

- the honest job completes with the right answer;
- the orchestrator and llm workers are alive and serve one more honest job;
- the attack's own output shows how it was contained, and no secret appears anywhere in
  its record or trajectory (the workers' environment holds fake API keys and the Redis
  password; planted files on the host hold another token);
- nothing is left behind but the orchestrator's idle pooled sandboxes (at most
  ``POOL_SIZE``, whose ACL users may read no context): no other process under the
  orchestrator, container it launched, sandbox ACL user, liveness key or ``rlm:sbx:*`` key.

The cleanup tests then end jobs every way a job can end (answer, error, cancellation,
orchestrator killed) and check the same; another test checks that nothing one job leaves in
its sandbox reaches the next job. One worker pair per backend serves the module.
``docs/security.md`` holds the resulting matrix.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from rlm_jobs import keys
from rlm_jobs.config import Settings
from rlm_jobs.keys import SANDBOX_USER_PREFIX
from rlm_jobs.models import JobStatus, Limits
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.sandboxes import acl
from rlm_jobs.sandboxes.backends.docker import OWNER_LABEL, SANDBOX_LABEL
from rlm_jobs.sandboxes.identities import Identities
from rlm_jobs.sandboxes.session import REPLACED_NOTE
from rlm_jobs.store import JobRecord
from rlm_jobs.submitter import JobHandle, Submitter
from rlm_jobs.testing import POLICIES, Policy, ScriptedProvider
from rlm_jobs.testing.policies import needle
from rlm_jobs.testing.policies.sub import NEEDLE_ASK, answer_sub
from tests.sandbox import attacks
from tests.support import Worker, connect_docker_or_fail, wait_for
from workers.app import create_app
from workers.enqueue import celery_enqueuer
from workers.names import ORCHESTRATE_QUEUE

pytestmark = pytest.mark.timeout(150)

BACKENDS = ["process", pytest.param("docker", marks=pytest.mark.docker)]

# Small limits, so the bombs go off quickly.
MEMORY_MB = 256
SCRATCH_MB = 16
MAX_PROCESSES = 32
# Sandboxes each orchestrator keeps started ahead of demand (the production default).
POOL_SIZE = 2
# The most a tmpfs Docker mounts by itself (/dev/shm) may take.
DOCKER_SHM_MB = 64
NEEDLE_CHUNK = 50_000  # the scripted needle policy's chunk size
# Longest a gated sub-call is held: a test that forgets to open the gate still ends.
GATE_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 90.0
CLEAN_TIMEOUT_S = 20.0
# How long a live orchestrator gets to remove a dead one's containers.
WITNESS_WAIT_S = 6.0
# Sandbox liveness keys live this long here; a dead orchestrator's ACL users are swept
# within this plus a sweep interval (1 s here), their keys just after; the kill test waits
# USERS_WAIT_S for both.
ALIVE_TTL_S = 4
USERS_WAIT_S = ALIVE_TTL_S + 11.0


# ---- the world the attacks run in ---------------------------------------------------------


class Gate:
    """A sub-model whose answers wait until the test opens it: keeps a job mid-cell."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._lock = threading.Lock()
        self._waiting = 0

    def answer(self, prompt: str) -> str:
        with self._lock:
            self._waiting += 1
        self._open.wait(GATE_TIMEOUT_S)
        return answer_sub(prompt)

    def waiting(self) -> int:
        with self._lock:
            return self._waiting

    def close(self) -> None:
        with self._lock:
            self._open.clear()
            self._waiting = 0

    def open(self) -> None:
        self._open.set()


@dataclass(frozen=True)
class Secrets:
    """Fake credentials the workers hold and files on the host; none may reach a job."""

    env: dict[str, str]
    files: tuple[Path, ...]
    file_token: str
    redis_password: str

    def tokens(self) -> list[str]:
        return [*self.env.values(), self.file_token, self.redis_password]


def token(prefix: str) -> str:
    return f"{prefix}-SECRET-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def secrets(redis_server: RedisServer) -> Iterator[Secrets]:
    file_token = token("file")
    # World-readable on purpose: only the sandbox's view of the file system protects them.
    shared_dir = Path(tempfile.mkdtemp(prefix="rlm-test-secret-"))
    shared_dir.chmod(0o755)
    files = [shared_dir / "credentials", Path.home() / f".rlm-test-secret-{uuid.uuid4().hex[:8]}"]
    for path in files:
        path.write_text(f"api_key = {file_token}\n")
        path.chmod(0o644)
    yield Secrets(
        env={
            "OPENAI_API_KEY": token("sk-test"),
            "RLM_JOBS_ANTHROPIC_API_KEY": token("sk-ant-test"),
            "AWS_SECRET_ACCESS_KEY": token("aws-test"),
        },
        files=tuple(files),
        file_token=file_token,
        redis_password=redis_server.password,
    )
    files[1].unlink(missing_ok=True)
    shutil.rmtree(shared_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate()


@pytest.fixture(scope="module")
def provider(gate: Gate) -> Iterator[ScriptedProvider]:
    policies = {**POLICIES, "gate": Policy(name="gate", root=needle.POLICY.root, sub=gate.answer)}
    with ScriptedProvider(policies=policies) as scripted:
        yield scripted


def host_addresses() -> tuple[str, ...]:
    """This host's IPv4 addresses other than loopback (a sandbox must reach none)."""
    try:
        out = subprocess.run(
            ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    found = re.findall(r"\sinet (\d+\.\d+\.\d+\.\d+)/", out)
    return tuple(a for a in found if not a.startswith("127."))


def require_docker() -> None:
    connect_docker_or_fail().close()


# ---- what is running, and what is left -----------------------------------------------------


def descendants(root: int) -> set[int]:
    """Live (non-zombie) processes below ``root`` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def sandbox_of(pid: int) -> str:
    """The sandbox a process belongs to, by its cgroup (``rlm-sbx-<id>``); else ``pid <n>``."""
    try:
        groups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return f"pid {pid}"
    match = re.search(r"/rlm-sbx-([0-9a-f]+)$", groups, re.M)
    return match.group(1) if match else f"pid {pid}"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def sandbox_containers(owner_pid: int | None = None) -> dict[str, str]:
    """Sandbox containers (id -> sandbox id), by label; only ``owner_pid``'s if given."""
    out = subprocess.run(
        [
            "docker", "ps", "-a", "--no-trunc", "--filter", f"label={SANDBOX_LABEL}",
            "--format", f'{{{{.ID}}}}\t{{{{.Label "{SANDBOX_LABEL}"}}}}\t'
            f'{{{{.Label "{OWNER_LABEL}"}}}}',
        ],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    found = {}
    for line in out.splitlines():
        container, sandbox_id, owner = line.split("\t")
        owner_fields = owner.split("/")
        if owner_pid is None or (len(owner_fields) == 4 and owner_fields[2] == str(owner_pid)):
            found[container] = sandbox_id
    return found


@dataclass
class AttackRun:
    """A finished attack job: its record and what its cell printed."""

    record: JobRecord
    trajectory: list[dict[str, Any]]

    @property
    def output(self) -> str:
        """Everything the cells printed or reported (stdout, stderr, error, note)."""
        parts = []
        for entry in self.trajectory:
            for block in entry.get("code_blocks", []):
                parts += [block["result"]["stdout"], block["result"]["stderr"]]
        return "\n".join(parts)

    @property
    def replaced(self) -> bool:
        return REPLACED_NOTE in self.output

    def lines(self, prefix: str) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith(prefix)]


@dataclass
class Neighbour:
    """The honest job beside an attack, held inside its search cell by the gate."""

    handle: JobHandle
    code: str
    sandbox_id: str
    context_key: str
    message_key: str


@dataclass
class Stack:
    """One orchestrator and one llm worker on one backend, shared by the module's tests."""

    backend: str
    server: RedisServer
    provider: ScriptedProvider
    gate: Gate
    secrets: Secrets
    logdir: Path
    env: dict[str, str]
    client: redis.Redis
    submitter: Submitter
    orchestrator: Worker = field(init=False)
    llm: Worker = field(init=False)
    workers: list[Worker] = field(default_factory=list)
    addresses: tuple[str, ...] = ()
    # What killing the orchestrator mid-job left behind (kill_orchestrator_mid_job).
    kill_report: KillReport | None = None

    def start(self, queues: str, concurrency: int) -> Worker:
        worker = Worker(queues, self.env, self.logdir, concurrency=concurrency)
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def start_orchestrator(self) -> None:
        self.orchestrator = self.start(ORCHESTRATE_QUEUE, 4)

    def stop(self) -> None:
        self.gate.open()
        for worker in self.workers:
            worker.stop()
        self.client.close()

    # ---- jobs -------------------------------------------------------------------------

    def submit_needle(self, code: str, *, gated: bool) -> JobHandle:
        return self.submitter.submit(
            "What is the secret code?",
            needle_context(2, code),
            model="scripted/needle",
            sub_model="scripted/gate" if gated else None,
            limits=Limits(cell_timeout_s=GATE_TIMEOUT_S + 10, max_timeout_s=120),
        )

    def submit_exec(self, code: str, *, cell_timeout_s: float, gated: bool = False) -> JobHandle:
        return self.submitter.submit(
            code,
            f"attacker's own context {uuid.uuid4().hex}",
            model="scripted/exec",
            sub_model="scripted/gate" if gated else None,
            limits=Limits(
                cell_timeout_s=cell_timeout_s, max_timeout_s=120, max_consecutive_errors=3
            ),
        )

    def start_neighbour(self) -> Neighbour:
        """An honest job, held by the gate in the middle of its sub-calls."""
        self.gate.close()
        code = f"HONEST-{uuid.uuid4().hex[:8]}"
        handle = self.submit_needle(code, gated=True)
        wait_for(self.gate.waiting, 60, "the honest job to reach its gated sub-calls")
        (sandbox_id,) = self.sandboxes_of(handle)
        messages = self.client.keys(keys.sandbox_message(sandbox_id, "*"))
        spec = handle.record().spec
        return Neighbour(
            handle, code, sandbox_id, keys.context_blob(spec.context.sha256), str(messages[0])
        )

    def assert_serves_an_honest_job(self) -> None:
        assert self.orchestrator.alive(), self.orchestrator.log()[-3000:]
        assert self.llm.alive(), self.llm.log()[-3000:]
        code = f"AFTER-{uuid.uuid4().hex[:8]}"
        record = self.submit_needle(code, gated=False).wait(timeout_s=JOB_TIMEOUT_S)
        assert record.row()["answer"] == code, record.row()

    def target(self, neighbour: Neighbour | None = None) -> attacks.Target:
        victim: dict[str, str] = {}
        if neighbour is not None:
            victim = {
                "victim_job_id": neighbour.handle.id,
                "victim_sandbox_id": neighbour.sandbox_id,
                "victim_context_key": neighbour.context_key,
                "victim_message_key": neighbour.message_key,
            }
        return attacks.Target(
            redis_port=self.server.port,
            provider_port=urlsplit(self.provider.url).port or 0,
            orchestrator_pid=self.orchestrator.proc.pid,
            host_addresses=self.addresses,
            secret_files=(
                *(str(p) for p in self.secrets.files),
                str(self.server.workdir / "redis.conf"),
                str(self.orchestrator.log_path),
            ),
            **victim,
        )

    # ---- what is running, and what is left ---------------------------------------------
    # The orchestrator keeps POOL_SIZE sandboxes started ahead of demand. Until a job takes
    # one, its ACL user may read no context: those idle ones are expected; every sandbox
    # that ever held a job's context must go when the job ends.

    def sandbox_users(self) -> dict[str, list[str]]:
        """Sandbox id -> the context keys its ACL user may read."""
        found = {}
        for user in map(str, self.client.acl_users()):
            if not user.startswith(SANDBOX_USER_PREFIX):
                continue
            try:
                rules: dict[str, Any] = self.client.acl_getuser(user) or {}
            except redis.RedisError:
                continue  # deleted meanwhile
            patterns = [str(k) for k in rules.get("keys", [])]
            granted = [k.removeprefix("%R~") for k in patterns if "rlm:ctx:" in k]
            found[user.removeprefix(SANDBOX_USER_PREFIX)] = granted
        return found

    def sandboxes_of(self, handle: JobHandle) -> set[str]:
        """The live sandboxes that may read this job's context."""
        context_key = keys.context_blob(handle.record().spec.context.sha256)
        return {id_ for id_, granted in self.sandbox_users().items() if context_key in granted}

    def cell_sent(self, handle: JobHandle) -> bool:
        """Whether one of the job's sandboxes has been sent a cell to run."""
        for sandbox_id in self.sandboxes_of(handle):
            for key in self.client.scan_iter(match=keys.sandbox_message(sandbox_id, "*")):
                if '"type":"exec"' in str(self.client.get(key) or ""):
                    return True
        return False

    def processes(self, worker: Worker | None = None) -> dict[int, str]:
        """Processes under the orchestrator -> the sandbox (cgroup) each belongs to."""
        return {pid: sandbox_of(pid) for pid in descendants((worker or self.orchestrator).proc.pid)}

    def containers(self, worker: Worker | None = None) -> dict[str, str]:
        if self.backend != "docker":
            return {}
        return sandbox_containers((worker or self.orchestrator).proc.pid)

    def leftovers(self) -> dict[str, Any]:
        """Everything that is not an idle pooled sandbox of the current orchestrator."""
        users = self.sandbox_users()
        idle = {id_ for id_, granted in users.items() if not granted}
        seen = {
            "processes": set(self.processes().values()),
            "containers": set(self.containers().values()),
            "keys": {k.split(":")[2] for k in map(str, self.client.keys("rlm:sbx:*"))},
            "liveness keys": {
                k.removeprefix(keys.sandbox_alive(""))
                for k in map(str, self.client.keys(keys.sandbox_alive("*")))
            },
        }
        left: dict[str, Any] = {}
        if holding := sorted(set(users) - idle):
            left["sandboxes that hold a job's context"] = holding
        for what, ids in seen.items():
            if stray := sorted(ids - idle):
                left[f"{what} of no idle pooled sandbox"] = stray
        if len(idle) > POOL_SIZE:
            left[f"more than {POOL_SIZE} idle sandboxes"] = sorted(idle)
        return left

    def assert_clean(self) -> None:
        try:
            wait_for(lambda: not self.leftovers(), CLEAN_TIMEOUT_S, "sandboxes to go")
        except AssertionError:
            raise AssertionError(f"left behind: {self.leftovers()}") from None

    def sandbox_is_up(self, handle: JobHandle) -> bool:
        """One of the job's sandboxes is running (a process or a container) with its user."""
        running = set(self.processes().values()) | set(self.containers().values())
        return bool(self.sandboxes_of(handle) & running)


def needle_context(n_chunks: int, code: str) -> str:
    filler = ("lorem ipsum dolor sit amet. " * (NEEDLE_CHUNK // 28 + 1))[: NEEDLE_CHUNK - 40]
    parts = [filler + "\n" for _ in range(n_chunks)]
    parts[-1] = filler[: NEEDLE_CHUNK // 2] + f"\nThe secret code is {code}.\n"
    return "".join(parts)


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    provider: ScriptedProvider,
    gate: Gate,
    secrets: Secrets,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    backend = str(request.param)
    if backend == "docker":
        require_docker()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    for user in map(str, client.acl_users()):
        if user != "default":
            client.acl_deluser(user)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "RLM_JOBS_REDIS_URL": redis_server.url,
        "RLM_JOBS_SANDBOX_REDIS_SOCKET": redis_server.unix_socket,
        "RLM_JOBS_SCRIPTED_BASE_URL": provider.url,
        "RLM_JOBS_MODEL": "scripted/generic",
        "RLM_JOBS_SANDBOX_BACKEND": backend,
        "RLM_JOBS_SANDBOX_MEMORY_MB": str(MEMORY_MB),
        "RLM_JOBS_SANDBOX_SCRATCH_MB": str(SCRATCH_MB),
        "RLM_JOBS_SANDBOX_MAX_PROCESSES": str(MAX_PROCESSES),
        "RLM_JOBS_SANDBOX_POOL_SIZE": str(POOL_SIZE),
        "RLM_JOBS_SANDBOX_START_TIMEOUT_S": "30",
        "RLM_JOBS_LEASE_TTL_S": "3",
        "RLM_JOBS_LEASE_RENEW_S": "0.5",
        "RLM_JOBS_REAPER_INTERVAL_S": "0.5",
        "RLM_JOBS_SANDBOX_SWEEP_INTERVAL_S": "1",
        "RLM_JOBS_SANDBOX_ALIVE_TTL_S": str(ALIVE_TTL_S),
        **secrets.env,
    }
    settings = Settings(redis_url=redis_server.url, scripted_base_url=provider.url)
    app = create_app(settings)
    submitter = Submitter(client, celery_enqueuer(settings, app), settings)
    built = Stack(
        backend=backend,
        server=redis_server,
        provider=provider,
        gate=gate,
        secrets=secrets,
        logdir=tmp_path_factory.mktemp(f"workers-{backend}"),
        env=env,
        client=client,
        submitter=submitter,
        addresses=host_addresses(),
    )
    try:
        built.start_orchestrator()
        built.llm = built.start("rlm.llm", 16)
        yield built
    finally:
        built.stop()


# ---- what each attack must show ------------------------------------------------------------


def check_fork_bomb(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    (spam,) = run.lines("subprocess spam:")
    (bomb,) = run.lines("fork bomb:")
    assert spam.endswith("Resource temporarily unavailable"), spam
    assert bomb.endswith("Resource temporarily unavailable"), bomb
    assert int(spam.split("after ")[1].split()[0]) < MAX_PROCESSES
    assert not run.replaced


def check_memory_bomb(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    if stack.backend == "process":  # the address-space limit: a MemoryError, sandbox kept
        (line,) = run.lines("memory bomb:")
        assert line.endswith("MemoryError") and int(line.split()[4]) <= MEMORY_MB, line
        assert not run.replaced
    else:  # the container's memory limit: the OOM killer, then a fresh sandbox
        assert f"killed: out of memory (limit {MEMORY_MB} MB)" in run.output
        assert run.replaced


def check_memory_bomb_processes(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    killed = [line for line in run.lines("child ") if line.endswith("killed by signal 9")]
    if run.replaced:  # the OOM killer may pick the runtime itself
        assert "out of memory" in run.output, run.output
    else:
        assert killed, run.output


def check_cpu_spin(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    assert "TimeoutError: the cell ran longer than its 4 s limit and was interrupted" in (
        run.output
    )
    assert not run.replaced


def check_cpu_spin_signals_ignored(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    assert (
        "TimeoutError: the cell did not stop within its 2 s limit plus a 5 s grace period "
        "(it ignored the interrupt), so its sandbox was killed." in run.output
    )
    assert run.replaced


def check_disk_fill(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    found = {}
    for line in run.lines("disk /"):
        match = re.fullmatch(r"disk (\S+): stopped after (\d+) MB: (.*)", line)
        assert match, line
        found[match.group(1)] = (int(match.group(2)), match.group(3))
    assert "disk fill done" in run.output
    assert found["/scratch"] == (SCRATCH_MB, "No space left on device"), found
    for where, (written_mb, why) in found.items():
        # Every writable place is a small tmpfs (charged to the sandbox's memory limit).
        assert why in ("No space left on device", "File too large", "Invalid argument"), where
        assert written_mb <= (SCRATCH_MB if where != "/dev/shm" else DOCKER_SHM_MB), where
    expected = {"/scratch"} if stack.backend == "process" else {"/scratch", "/tmp", "/dev/shm"}
    assert expected <= set(found) <= expected | {"/dev/mqueue"}, found


def check_network_egress(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    assert "ALLOWED" not in run.output
    tcp = run.lines("tcp ")
    assert len(tcp) == 7 + len(stack.addresses), tcp
    for line in tcp:
        assert re.search(
            r"refused: \w+: \[Errno \d+\] "
            r"(Connection refused|Network is unreachable|Cannot assign requested address)$",
            line,
        ), line
    for line in tcp:  # nothing but loopback answers at all, and it is the sandbox's own
        if "Connection refused" in line:
            assert line.startswith(("tcp 127.0.0.1:", "tcp [::1]:")), line
    assert "udp 198.51.100.1:53: refused: OSError: [Errno 101] Network is unreachable" in (
        run.output
    )
    assert "raw packet socket: refused: PermissionError" in run.output
    assert "interfaces: ['lo']" in run.output


def check_secrets(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    (names,) = run.lines("env names:")
    allowed = {
        "process": "['HOME', 'LANG', 'LD_LIBRARY_PATH', 'PATH', 'PWD', "
        "'PYTHONDONTWRITEBYTECODE', 'PYTHONHASHSEED', 'PYTHONNOUSERSITE', 'PYTHONPATH', "
        "'TMPDIR']",
        "docker": "['HOME', 'HOSTNAME', 'LANG', 'PATH', 'PYTHONHASHSEED', 'TMPDIR']",
    }
    assert names == f"env names: {allowed[stack.backend]}"
    (pids,) = run.lines("visible pids:")
    assert len(ast.literal_eval(pids.split(": ", 1)[1])) <= 3, pids  # only its own
    orchestrator = stack.orchestrator.proc.pid
    for what in ("environ", "cmdline"):
        assert f"/proc/{orchestrator}/{what}: refused: FileNotFoundError" in run.output
    for path in stack.target().secret_files:  # not there, or (docker's own /root) not ours
        assert re.search(
            f"^{re.escape(path)}: refused: (FileNotFound|Permission)Error", run.output, re.M
        ), path


def check_docker_socket(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    socket_in_sandbox = {"process": "/run/rlm/redis.sock", "docker": "/run/rlm-redis/redis.sock"}
    assert f"unix sockets visible: ['{socket_in_sandbox[stack.backend]}']" in run.output
    api = run.lines("docker api ")
    assert len(api) == 6
    for line in api:
        assert "refused: FileNotFoundError" in line or "refused: ConnectionRefusedError" in line


REDIS_PROBES = [
    "GET neighbour job record", "HGETALL neighbour job record", "GET neighbour context",
    "GET neighbour sandbox message", "SET neighbour sandbox key",
    "PUBLISH forged exec to neighbour", "PUBLISH forged result as neighbour",
    "SUBSCRIBE neighbour in", "SUBSCRIBE neighbour out", "PSUBSCRIBE rlm:*",
    "KEYS *", "SCAN 0", "RANDOMKEY", "DBSIZE", "INFO", "PUBSUB CHANNELS", "CONFIG GET",
    "CONFIG SET", "FLUSHALL", "FLUSHDB", "ACL LIST", "ACL USERS", "ACL WHOAMI", "ACL SETUSER",
    "ACL DELUSER", "CLIENT LIST", "CLIENT KILL", "MONITOR", "EVAL return redis.call('KEYS', '*')",
    "FUNCTION LIST", "MODULE LIST", "SAVE", "BGSAVE", "SELECT 1", "SWAPDB 0", "DEL rlm:job:",
    "SHUTDOWN NOSAVE",
]  # fmt: skip


def check_redis(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    assert "ALLOWED" not in run.output
    for probe in REDIS_PROBES:
        assert any(
            line.startswith(probe) and ": refused: ReplyError: NOPERM" in line
            for line in run.output.splitlines()
        ), probe
    # One line per attempt (none was skipped by a crash), every one refused.
    assert len([line for line in run.output.splitlines() if ": refused: " in line]) == 42
    # DEBUG is refused before the ACL is even consulted (enable-debug-command no).
    assert "DEBUG SLEEP: refused: " in run.output
    assert "connect as default, no password: refused: ReplyError: NOAUTH" in run.output
    for who in ("default, guessed password", "the neighbour's user"):
        refused = f"connect as {who}: refused: AuthFailed: authentication failed: WRONGPASS"
        assert refused in run.output
    # The server agrees: its ACL log holds the attacker's refused attempts, nothing changed.
    (fished,) = run.lines("fished the runtime's client: user ")
    attacker = fished.split()[5]
    neighbour_user = keys.sandbox_user(neighbour.sandbox_id)
    denied = stack.client.acl_log(count=500)
    assert attacker in {e["username"] for e in denied}, denied
    assert {e["username"] for e in denied} <= {attacker, "default", neighbour_user}, denied
    assert {e["reason"] for e in denied} >= {"command", "key", "channel", "auth"}, denied
    assert not acl.default_user_is_open(stack.client)
    assert stack.client.config_get("requirepass")["requirepass"] == stack.server.password


def check_kill_parent(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    assert "parent still alive: True" in run.output
    for what in ("kill(orchestrator, SIGKILL)", "killpg(orchestrator's group, SIGKILL)"):
        assert f"{what}: refused: ProcessLookupError" in run.output
    assert "kill(-1, SIGKILL): refused: ProcessLookupError" in run.output
    assert not run.replaced


def check_kill_parent_group(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    assert "The sandbox process died while running this cell (killed by SIGKILL" in run.output
    assert "still running after killpg(0)" not in run.output
    assert run.replaced


def check_privilege_escalation(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    assert "ALLOWED" not in run.output
    status = dict(line.removeprefix("status ").split(": ", 1) for line in run.lines("status "))
    uid = status["Uid"].split()
    assert len(set(uid)) == 1 and uid[0] != "0", status
    for caps in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert status[caps] == "0000000000000000", status
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status
    assert len(run.lines("setuid(0): refused: PermissionError")) == 1
    assert len([line for line in run.output.splitlines() if ": refused: " in line]) == 7


def check_redis_flood(stack: Stack, run: AttackRun, neighbour: Neighbour) -> None:
    (line,) = run.lines("redis flood: ")
    assert line.startswith("redis flood: refused after 0 MB: ReplyError: NOPERM"), line
    assert run.lines("publish flood: published 32 MB")
    assert not run.replaced


CHECKS = {
    "fork_bomb": check_fork_bomb,
    "memory_bomb": check_memory_bomb,
    "memory_bomb_processes": check_memory_bomb_processes,
    "cpu_spin": check_cpu_spin,
    "cpu_spin_signals_ignored": check_cpu_spin_signals_ignored,
    "disk_fill": check_disk_fill,
    "network_egress": check_network_egress,
    "secrets": check_secrets,
    "docker_socket": check_docker_socket,
    "redis": check_redis,
    "kill_parent": check_kill_parent,
    "kill_parent_group": check_kill_parent_group,
    "privilege_escalation": check_privilege_escalation,
    "redis_flood": check_redis_flood,
}

# Attacks that are not contained yet: each names its gap (see docs/security.md).
GAPS: dict[str, str] = {}
ATTACKS = [
    pytest.param(
        attack,
        id=attack.name,
        marks=[pytest.mark.xfail(strict=True, reason=GAPS[attack.name])]
        if attack.name in GAPS
        else [],
    )
    for attack in attacks.ALL
]


def test_every_attack_has_a_check() -> None:
    assert set(CHECKS) == set(attacks.BY_NAME)


# ---- the attacks ---------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_is_contained(stack: Stack, attack: attacks.Attack) -> None:
    # Given an honest job held mid-cell beside the attack, and a canary in Redis
    stack.assert_clean()
    canary = f"rlm:test:canary:{uuid.uuid4().hex}"
    stack.client.set(canary, "still here")
    stack.client.acl_log_reset()
    neighbour = stack.start_neighbour()
    try:
        # When the attack runs
        handle = stack.submit_exec(
            attack.code(stack.target(neighbour)), cell_timeout_s=attack.cell_timeout_s
        )
        if attack.neighbour_finishes_during:
            wait_for(lambda: stack.cell_sent(handle), 30, "the attack's cell to start")
            stack.gate.open()
            neighbour.handle.wait(timeout_s=JOB_TIMEOUT_S)
            assert not handle.status().finished, "the attack ended before its neighbour"
        run = AttackRun(handle.wait(timeout_s=JOB_TIMEOUT_S), handle.trajectory())
        if not attack.neighbour_finishes_during:
            assert neighbour.handle.status() is JobStatus.RUNNING
    finally:
        stack.gate.open()

    # Then the neighbour gets its answer, and the workers serve the next job
    honest = neighbour.handle.wait(timeout_s=JOB_TIMEOUT_S).row()
    assert honest["status"] == "COMPLETED" and honest["answer"] == neighbour.code, honest
    stack.assert_serves_an_honest_job()
    # and the attack ended as a job that reports what happened, with no secret in it
    assert run.record.status is JobStatus.COMPLETED, run.record.fields
    exposed = json.dumps(run.record.fields) + json.dumps(run.trajectory)
    for secret in stack.secrets.tokens():
        assert secret not in exposed
    assert stack.client.get(canary) == "still here"
    CHECKS[attack.name](stack, run, neighbour)
    stack.assert_clean()


def test_no_state_crosses_from_one_job_to_the_next(stack: Stack) -> None:
    # Given a job that leaves files, variables, patched modules and a process behind
    stack.assert_clean()
    planted = stack.submit_exec(attacks.PLANT, cell_timeout_s=10).wait(timeout_s=JOB_TIMEOUT_S)
    assert planted.row()["answer"] == "planted", planted.row()
    # When the next jobs look for them in their (pooled) sandboxes
    for _ in range(POOL_SIZE + 1):
        look = stack.submit_exec(attacks.LOOK, cell_timeout_s=10).wait(timeout_s=JOB_TIMEOUT_S)
        # Then nothing is there: every job gets a sandbox of its own, never reused
        assert look.row()["answer"] == "left by an earlier job: [] other processes: []", look.row()
    stack.assert_clean()


# ---- cleanup: every way a job ends ---------------------------------------------------------

GATED_CELL = (
    "print('waiting at the gate')\n"
    f"print(llm_query({NEEDLE_ASK!r} + ' The secret code is GATE-1.'))\n"
)


def start_gated_job(stack: Stack) -> JobHandle:
    """A job whose one cell waits at the gate; returns once its sandbox is up."""
    stack.assert_clean()
    stack.gate.close()
    handle = stack.submit_exec(GATED_CELL, cell_timeout_s=GATE_TIMEOUT_S + 10, gated=True)
    wait_for(stack.gate.waiting, 60, "the job to reach the gate")
    assert stack.sandbox_is_up(handle), stack.leftovers()
    return handle


def test_cleanup_after_an_answer(stack: Stack) -> None:
    handle = start_gated_job(stack)
    stack.gate.open()
    record = handle.wait(timeout_s=JOB_TIMEOUT_S)
    assert record.status is JobStatus.COMPLETED, record.fields
    assert record.row()["answer"].endswith("GATE-1"), record.row()
    stack.assert_clean()


def test_cleanup_after_an_error(stack: Stack) -> None:
    handle = start_gated_job(stack)
    stack.provider.inject("400", model="scripted/exec")  # the next root call fails
    stack.gate.open()
    record = handle.wait(timeout_s=JOB_TIMEOUT_S)
    assert record.status is JobStatus.FAILED, record.fields
    assert "root model call failed" in record.fields["reason"]
    stack.assert_clean()


def test_cleanup_after_cancellation(stack: Stack) -> None:
    handle = start_gated_job(stack)
    try:
        handle.cancel()
        record = handle.wait(timeout_s=JOB_TIMEOUT_S)
        assert record.status is JobStatus.CANCELLED
        stack.assert_clean()  # while its sub-call is still held at the gate
    finally:
        stack.gate.open()


@dataclass
class KillReport:
    """What an orchestrator SIGKILLed mid-cell left, and who cleaned it up."""

    # The dead orchestrator's, at the moment it was killed (its pooled sandboxes included).
    processes: set[int]
    containers: dict[str, str]
    users: set[str]
    containers_after_kill: dict[str, str] = field(default_factory=dict)
    # Gone before any new orchestrator started (docker: while another one was alive).
    gone_without_a_restart: bool = False
    # Sandbox ACL users of the dead orchestrator still in Redis USERS_WAIT_S after its
    # death, and the keys still in their namespaces then.
    users_left: set[str] = field(default_factory=set)
    keys_left: set[str] = field(default_factory=set)


def eventually(condition: Callable[[], object], timeout_s: float) -> bool:
    try:
        wait_for(condition, timeout_s, "")
    except AssertionError:
        return False
    return True


def kill_orchestrator_mid_job(stack: Stack) -> KillReport:
    """SIGKILL the orchestrator's process group mid-cell; see what is left and who reaps it.

    Docker: a second orchestrator (the witness) is alive through the kill, then a fresh one
    starts. Runs once per stack; the tests below read its report.
    """
    if stack.kill_report is not None:
        return stack.kill_report
    handle = start_gated_job(stack)
    dead = stack.orchestrator
    report = KillReport(set(stack.processes()), stack.containers(), set(stack.sandbox_users()))
    witness = stack.start(ORCHESTRATE_QUEUE, 4) if stack.backend == "docker" else None
    try:
        dead.kill()
        # Process sandboxes die with their parent (bwrap --die-with-parent).
        wait_for(lambda: not any(map(alive, report.processes)), 15, "sandbox processes to die")
        report.containers_after_kill = stack.containers(dead)
        report.gone_without_a_restart = eventually(
            lambda: not stack.containers(dead), WITNESS_WAIT_S if witness else 0
        )
        if witness is None:
            stack.start_orchestrator()
        # The job is resumed by a live orchestrator once its lease expires; stop it there.
        handle.cancel()
        assert handle.wait(timeout_s=JOB_TIMEOUT_S).status is JobStatus.CANCELLED
    finally:
        stack.gate.open()
    if witness is not None:
        witness.stop()
        # A new orchestrator removes containers whose launcher is gone as it starts.
        stack.start_orchestrator()
    wait_for(lambda: not stack.containers(dead), 30, "orphaned containers to be reaped")

    def users_left() -> set[str]:
        return report.users & set(stack.sandbox_users())

    def keys_left() -> set[str]:
        """The keys still in the dead sandboxes' namespaces (named, so a failure says which)."""
        return {
            str(key)
            for sandbox_id in report.users
            for key in stack.client.scan_iter(match=keys.sandbox_prefix(sandbox_id) + "*")
        }

    # The sweep deletes a sandbox's keys, then its user: wait for both.
    eventually(lambda: not users_left() and not keys_left(), USERS_WAIT_S)
    report.users_left = users_left()
    report.keys_left = keys_left()
    # Keep the module's shared Redis clean for the tests after this one.
    identities = Identities(stack.client)  # the dead workers' users: nobody remembers them
    for sandbox_id in report.users:
        acl.delete_user(stack.client, identities, sandbox_id)
        acl.delete_keys(stack.client, sandbox_id)
        stack.client.delete(keys.sandbox_alive(sandbox_id))
    stack.kill_report = report
    return report


def test_cleanup_after_worker_kill(stack: Stack) -> None:
    report = kill_orchestrator_mid_job(stack)
    if stack.backend == "process":
        assert report.processes, "the sandbox was not found in the process tree"
    else:
        assert report.containers, "the sandbox was not found by its label"
    assert not any(map(alive, report.processes))
    assert not set(report.containers) & set(sandbox_containers())
    assert stack.orchestrator.alive()
    stack.assert_serves_an_honest_job()
    stack.assert_clean()


def test_a_dead_orchestrator_s_sandboxes_go_while_another_lives(stack: Stack) -> None:
    # Live orchestrators sweep for orphaned containers every sandbox_sweep_interval_s (1 s here).
    report = kill_orchestrator_mid_job(stack)
    assert report.gone_without_a_restart, report.containers_after_kill


def test_a_dead_orchestrator_s_sandbox_acl_users_are_removed(stack: Stack) -> None:
    report = kill_orchestrator_mid_job(stack)
    assert report.users, "the dead orchestrator had no sandbox users to leave behind"
    assert report.users_left == set()
    assert report.keys_left == set()
