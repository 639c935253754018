"""The docker backend on a real engine: isolation settings, bootstrap delivery, cleanup.

These tests talk to the runtime in the image over the raw wire (no session), so they check
the container itself. They need a running Docker engine and the sandbox image:

    sudo ops/start-dockerd.sh && ops/build-images.sh sandbox

Without them the tests FAIL with that hint; they are skipped only when the environment says
so explicitly with RLM_JOBS_TEST_DOCKER=0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.sandboxes.backends import docker as docker_backend
from rlm_jobs.sandboxes.backends.docker import DockerBackend, DockerSandbox, reap_orphans
from rlm_jobs.sandboxes.backends.docker.socket_mount import answers_without_auth
from rlm_jobs.sandboxes.channel import SandboxChannel
from rlm_jobs.sandboxes.hub import PubSubHub
from rlm_jobs.sandboxes.services import SandboxServices
from sandbox import wire
from sandbox.records import CellResult
from tests.support import connect_docker_or_fail

pytestmark = pytest.mark.docker

CONTEXT_KEY = "test:docker:context"
READY_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A client of a running engine that has the sandbox image; fails loudly otherwise."""
    if os.environ.get("RLM_JOBS_TEST_DOCKER") == "0":
        pytest.skip("Docker tests disabled explicitly with RLM_JOBS_TEST_DOCKER=0")
    client = connect_docker_or_fail()
    yield client
    client.close()


@pytest.fixture
def docker_settings(redis_server: RedisServer) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        sandbox_redis_socket=redis_server.unix_socket,
        sandbox_memory_mb=192,
        sandbox_max_processes=32,
        sandbox_scratch_mb=8,
    )


class Peer:
    """The orchestrator's side of one sandbox: the host's channel, without a session."""

    def __init__(self, client: redis.Redis, hub: PubSubHub, sandbox_id: str) -> None:
        self.client = client
        self.sandbox_id = sandbox_id
        self.channel = SandboxChannel(client, hub, sandbox_id)  # before launch
        self._seq = 0
        # A user of its own (Redis's default user may need a password the sandbox lacks);
        # the ACL itself is the session's business, tested elsewhere.
        self.username = "test-docker-" + sandbox_id[:12]
        self.password = "pw-" + wire.new_id()
        client.acl_setuser(
            self.username,
            enabled=True,
            passwords=["+" + self.password],
            categories=["+@all"],
            keys=["*"],
            channels=["*"],
        )

    def bootstrap(self, socket_path: str, **extra: Any) -> wire.Bootstrap:
        return wire.Bootstrap(
            sandbox_id=self.sandbox_id,
            redis_unix_socket=socket_path,
            channel_in=self.channel.channel_in,
            channel_out=self.channel.channel_out,
            message_key_prefix=self.channel.prefix,
            context_key=CONTEXT_KEY,
            username=self.username,
            password=self.password,
            **extra,
        )

    def receive(self, kind: type[Any], timeout_s: float = READY_TIMEOUT_S) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self.channel.receive(0.2)
            if isinstance(msg, kind):
                return msg
            assert not isinstance(msg, wire.Fatal), msg.message
        raise AssertionError(f"no {kind.__name__} from sandbox {self.sandbox_id}")

    def send_cell(self, code: str, timeout_s: float = 20.0) -> wire.ExecCell:
        self._seq += 1
        cell = wire.ExecCell(
            seq=self._seq,
            id=wire.new_id(),
            code=textwrap.dedent(code),
            timeout_s=timeout_s,
            max_output_chars=20_000,
        )
        self.channel.send(cell)
        return cell

    def run(self, code: str, timeout_s: float = 20.0) -> CellResult:
        self.send_cell(code, timeout_s)
        done: wire.CellDone = self.receive(wire.CellDone, timeout_s + 10)
        return done.result

    def close(self) -> None:
        self.channel.close()


Launch = Callable[..., tuple[DockerSandbox, Peer]]


@pytest.fixture
def launch(
    docker_client: Any,
    docker_settings: Settings,
    redis_client: redis.Redis,
    services: SandboxServices,
) -> Iterator[Launch]:
    """Launches sandboxes that are ready; kills them all at the end of the test."""
    redis_client.set(CONTEXT_KEY, json.dumps("hello from the host"))
    backend = DockerBackend(docker_settings, client=docker_client)
    started: list[tuple[DockerSandbox, Peer]] = []

    def launch_(**extra: Any) -> tuple[DockerSandbox, Peer]:
        peer = Peer(redis_client, services.hub, wire.new_id())
        assert docker_settings.sandbox_redis_socket is not None
        sandbox = backend.launch(peer.bootstrap(docker_settings.sandbox_redis_socket, **extra))
        started.append((sandbox, peer))
        peer.receive(wire.Ready)
        return sandbox, peer

    yield launch_
    for sandbox, peer in started:
        sandbox.kill()
        peer.close()


def inspect(docker_client: Any, sandbox: DockerSandbox) -> dict[str, Any]:
    attrs: dict[str, Any] = docker_client.api.inspect_container(sandbox.container_id)
    return attrs


def test_limits_and_hardening_are_visible_in_inspect(
    launch: Launch, docker_client: Any, docker_settings: Settings
) -> None:
    sandbox, _ = launch()
    attrs = inspect(docker_client, sandbox)
    host, config = attrs["HostConfig"], attrs["Config"]
    memory = docker_settings.sandbox_memory_mb * 1024 * 1024
    assert host["Memory"] == memory
    assert host["MemorySwap"] == memory  # no swap beyond the limit
    assert host["NanoCpus"] == int(docker_backend.DEFAULT_CPUS * 1e9)
    assert host["PidsLimit"] == docker_settings.sandbox_max_processes
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Privileged"] is False and host["Init"] is True
    assert set(host["Tmpfs"]) == {"/scratch", "/tmp"}
    assert all("size=8m" in options for options in host["Tmpfs"].values())
    assert config["User"] == "10001:10001"
    assert [(m["Type"], m["RW"]) for m in attrs["Mounts"]] == [("bind", False)]
    assert not attrs["NetworkSettings"]["Networks"].get("bridge")


def test_bootstrap_secrets_stay_out_of_inspect_env_and_logs(
    launch: Launch, docker_client: Any
) -> None:
    sandbox, peer = launch()  # ready: it authenticated with the password it was given
    attrs = json.dumps(inspect(docker_client, sandbox))
    assert peer.password not in attrs and "Bootstrap" not in attrs
    env = peer.run("import os, json\nprint(json.dumps(dict(os.environ)))").stdout
    assert peer.password not in env
    allowed = {"PATH", "HOME", "TMPDIR", "LANG", "HOSTNAME", "PYTHONHASHSEED"}
    assert set(json.loads(env)) <= allowed
    logs = docker_client.api.logs(sandbox.container_id).decode()
    assert peer.password not in logs


def test_code_runs_unprivileged_with_no_network_and_a_read_only_root(
    launch: Launch, redis_server: RedisServer
) -> None:
    _, peer = launch()
    out = peer.run(
        f"""
        import json, os, socket
        facts = {{"uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd()}}
        facts["interfaces"] = sorted(os.listdir("/sys/class/net"))
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        facts["cap_eff"] = status["CapEff"].strip()
        facts["no_new_privs"] = status["NoNewPrivs"].strip()
        def refused(path):
            try:
                open(path, "w").close()
            except OSError as exc:
                return exc.strerror
            return "written"
        facts["root"] = refused("/etc/evil")
        facts["scratch"] = refused("/scratch/ok")
        try:  # the host's loopback is not the sandbox's: its Redis port is closed here
            socket.create_connection(("127.0.0.1", {redis_server.port}), timeout=2)
            facts["host_redis"] = "reached"
        except OSError as exc:
            facts["host_redis"] = type(exc).__name__
        facts["host_files"] = os.path.exists("{os.getcwd()}")
        print(json.dumps(facts))
        """
    )
    assert out.error is None, out.error
    facts = json.loads(out.stdout)
    assert facts["uid"] == 10001 and facts["gid"] == 10001
    assert facts["cwd"] == "/scratch"
    assert facts["interfaces"] == ["lo"]
    assert facts["cap_eff"] == "0000000000000000" and facts["no_new_privs"] == "1"
    assert facts["root"] == "Read-only file system"
    assert facts["scratch"] == "written"
    assert facts["host_redis"] == "ConnectionRefusedError"
    assert facts["host_files"] is False


def test_scratch_and_process_limits_hold(launch: Launch) -> None:
    _, peer = launch()
    out = peer.run(
        """
        import threading
        try:
            with open("/scratch/big", "wb") as f:
                for _ in range(16):
                    f.write(b"x" * 2**20)
            print("filled")
        except OSError as exc:
            print("disk:", exc.strerror)
        stop, started = threading.Event(), 0
        try:
            for _ in range(200):
                threading.Thread(target=stop.wait, daemon=True).start()
                started += 1
        except RuntimeError:
            pass
        stop.set()
        print("threads:", started)
        """
    )
    lines = out.stdout.splitlines()
    assert lines[0] == "disk: No space left on device"
    assert 0 < int(lines[1].split()[1]) < 32


def test_out_of_memory_kills_the_sandbox_and_says_so(launch: Launch) -> None:
    sandbox, peer = launch()
    peer.send_cell("x = b'x' * (512 * 2**20)")
    deadline = time.monotonic() + 20
    while sandbox.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sandbox.alive()
    assert "out of memory" in sandbox.describe_exit()


def test_exit_code_is_described(launch: Launch) -> None:
    sandbox, peer = launch()
    peer.send_cell("import os\nos._exit(7)", timeout_s=5)
    deadline = time.monotonic() + 10
    while sandbox.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox.describe_exit().startswith("exited with code 7")


def test_labels_name_the_sandbox_and_this_process(launch: Launch, docker_client: Any) -> None:
    sandbox, peer = launch()
    labels = inspect(docker_client, sandbox)["Config"]["Labels"]
    assert labels[docker_backend.SANDBOX_LABEL] == peer.sandbox_id
    owner = docker_backend.Owner.parse(labels[docker_backend.OWNER_LABEL])
    assert owner == docker_backend.Owner.current()


def test_kill_removes_the_container_and_is_idempotent(launch: Launch, docker_client: Any) -> None:
    sandbox, _ = launch()
    assert sandbox.alive()
    sandbox.kill()
    sandbox.kill()
    assert not sandbox.alive()
    assert "killed by the orchestrator" in sandbox.describe_exit()
    assert not docker_client.containers.list(all=True, filters={"id": sandbox.container_id})


def test_reap_orphans_removes_sandboxes_of_dead_owners_only(
    launch: Launch,
    docker_client: Any,
    docker_settings: Settings,
    redis_client: redis.Redis,
    services: SandboxServices,
) -> None:
    # Given a sandbox whose launching process exited without cleaning up
    orphan_id = wire.new_id()
    peer = Peer(redis_client, services.hub, orphan_id)
    assert docker_settings.sandbox_redis_socket is not None
    boot = peer.bootstrap(docker_settings.sandbox_redis_socket)
    script = (
        "import sys\n"
        "from rlm_jobs.config import Settings\n"
        "from rlm_jobs.sandboxes.backends.docker import DockerBackend\n"
        "from sandbox.wire import Bootstrap\n"
        "settings = Settings.model_validate_json(sys.argv[1])\n"
        "DockerBackend(settings).launch(Bootstrap.from_json(sys.argv[2]))\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, docker_settings.model_dump_json(), boot.to_json()],
        check=True,
        timeout=60,
    )
    peer.receive(wire.Ready)
    peer.close()
    # and a sandbox of this (living) process
    mine, _ = launch()
    # When the orphans are reaped
    reaped = reap_orphans(docker_settings, client=docker_client)
    # Then only the orphan is gone
    assert orphan_id in reaped
    left = docker_client.containers.list(
        all=True, filters={"label": docker_backend.SANDBOX_LABEL + "=" + orphan_id}
    )
    assert not left
    assert mine.alive()


def test_a_missing_image_is_a_config_error(docker_client: Any, docker_settings: Settings) -> None:
    settings = docker_settings.model_copy(update={"docker_image": "rlm-jobs-no-such-image:0"})
    with pytest.raises(ConfigError, match=r"ops/build-images\.sh"):
        DockerBackend(settings, client=docker_client)


def test_a_missing_socket_is_a_config_error(
    docker_client: Any, docker_settings: Settings, tmp_path: Any
) -> None:
    backend = DockerBackend(docker_settings, client=docker_client)
    peer_boot = wire.Bootstrap(
        sandbox_id=wire.new_id(),
        redis_unix_socket=str(tmp_path / "nothing.sock"),
        channel_in="a",
        channel_out="b",
        message_key_prefix="c",
        context_key="d",
    )
    with pytest.raises(ConfigError, match="does not exist"):
        backend.launch(peer_boot)


@pytest.fixture
def open_redis_socket(tmp_path: Any) -> Iterator[str]:
    """A redis-server whose default user has no password, on a Unix socket."""
    sock = tmp_path / "open.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    yield str(sock)
    proc.terminate()
    proc.wait(timeout=10)


def test_a_redis_socket_open_without_a_password_is_refused(
    docker_client: Any, docker_settings: Settings, open_redis_socket: str
) -> None:
    assert answers_without_auth(open_redis_socket)
    backend = DockerBackend(docker_settings, client=docker_client)
    bootstrap = wire.Bootstrap(
        sandbox_id=wire.new_id(),
        redis_unix_socket=open_redis_socket,
        channel_in="a",
        channel_out="b",
        message_key_prefix="c",
        context_key="d",
    )
    with pytest.raises(ConfigError, match="without a password"):
        backend.launch(bootstrap)
