"""Starting and ending one sandbox: the steps a session and a pool share.

A start is: a start slot (``StartSlots``), liveness key, ACL user, subscription on the hub
(made *before* launch, so ``Ready`` cannot be missed), the backend's launch with the
bootstrap, then the ready handshake, which frees the slot. An end is: ask the runtime to
stop, wait briefly, kill, delete the ACL user, its liveness key and keys, unsubscribe; every
step runs even if one fails.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from rlm_jobs import keys
from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError, SandboxError, SandboxTimeout
from rlm_jobs.sandboxes import acl
from rlm_jobs.sandboxes.base import SandboxBackend, SandboxProcess
from rlm_jobs.sandboxes.hub import PubSubHub, Subscription, hub_for
from rlm_jobs.sandboxes.janitor import Janitor, janitor_for
from sandbox import wire

log = logging.getLogger(__name__)

# What the host sends and then waits on an answer for.
Request = wire.ExecCell | wire.LoadContext

# How often a waiting host checks that the runtime is still alive.
LIVENESS_CHECK_S = 0.5
# How often a waiting host reads the stored copy of a reply, in case pub/sub lost it.
STORED_REPLY_POLL_S = 1.0
# A runtime asked to shut down gets this long before it is killed.
SHUTDOWN_WAIT_S = 1.0
# A heartbeat saying the runtime lacks the awaited request is believed only this long after
# the request was last sent (one sent before the request arrived proves nothing), and
# heeded at most this often (model code can send heartbeats too).
RESEND_AFTER_S = 1.0


class StartSlots:
    """At most ``limit`` sandbox starts at once in this process; jobs before pool refills.

    A start is CPU-bound (a fresh interpreter, or a container, getting going): a burst that
    starts everything at once slows every start down and the first jobs wait as long as the
    last. A job queues for a slot in arrival order (``acquire``); a pool refill takes only a
    slot that is free while no job waits (``try_acquire``), so refills never delay a job. A
    slot is held from the launch until the runtime says Ready or the start fails; a freed
    slot goes straight to the oldest waiting job.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._free = limit
        self._waiting: deque[threading.Event] = deque()

    def acquire(self) -> StartSlot:
        """Wait for a slot, behind the jobs that asked earlier."""
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return StartSlot(self)
            handed = threading.Event()
            self._waiting.append(handed)
        try:
            handed.wait()
        except BaseException:
            with self._lock:
                if handed.is_set():
                    self._hand_on()  # it was ours already: the next in line gets it
                else:
                    self._waiting.remove(handed)
            raise
        return StartSlot(self)

    @property
    def waiting(self) -> int:
        """Jobs queued for a slot right now."""
        with self._lock:
            return len(self._waiting)

    def try_acquire(self) -> StartSlot | None:
        """A slot if one is free and no job is waiting for one (pool refills), else None."""
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return StartSlot(self)
            return None

    def _release(self, slot: StartSlot) -> None:
        with self._lock:
            if slot.held:
                slot.held = False
                self._hand_on()

    def _hand_on(self) -> None:
        """Called with the lock held: a freed slot goes to the oldest waiter, or is free."""
        if self._waiting:
            self._waiting.popleft().set()
        else:
            self._free += 1


class StartSlot:
    """One start's right to run; ``release`` is safe to call more than once."""

    def __init__(self, slots: StartSlots) -> None:
        self._slots = slots
        self.held = True

    def release(self) -> None:
        self._slots._release(self)


_start_slots: dict[int, StartSlots] = {}
_start_slots_lock = threading.Lock()


def start_slots_for(settings: Settings) -> StartSlots:
    """The process's start slots: shared by every launcher with the same limit.

    A service process has one ``Settings``, hence one limit for all its sessions and pools;
    keying by the limit lets a test (or an embedding) ask for another one.
    """
    limit = settings.sandbox_start_concurrency
    with _start_slots_lock:
        slots = _start_slots.get(limit)
        if slots is None:
            slots = _start_slots[limit] = StartSlots(limit)
        return slots


@dataclass
class LiveSandbox:
    id: str
    sub: Subscription
    process: SandboxProcess | None = None
    # Set once the runtime said Ready (a pool hands out sandboxes that are still starting).
    ready: bool = False
    # Held until the start is over (ready or failed); whoever waits for Ready frees it.
    start_slot: StartSlot | None = None
    launched_at: float = field(default_factory=time.monotonic)
    # Request ids already being served: the runtime re-sends a request it got no answer to.
    requests_seen: set[str] = field(default_factory=set)
    # When the request now awaited (a cell, a context load) was last sent (monotonic), to
    # pace sending it again.
    request_sent_at: float = 0.0
    prefix: str = field(init=False)
    channel_in: str = field(init=False)
    _seq: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def __post_init__(self) -> None:
        self.prefix = keys.sandbox_message(self.id, "")
        self.channel_in = keys.sandbox_to_sandbox(self.id)

    def next_seq(self) -> int:
        return next(self._seq)

    def describe(self) -> str:
        return "no process" if self.process is None else self.process.describe_exit()

    def end_start(self) -> None:
        """The start is over (ready, failed or abandoned): the next start may run."""
        slot, self.start_slot = self.start_slot, None
        if slot is not None:
            slot.release()


class Launcher:
    """Starts and ends sandboxes of one backend against one Redis."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        backend: SandboxBackend,
        *,
        hub: PubSubHub | None = None,
        janitor: Janitor | None = None,
        heartbeat_s: float = 5.0,
        start_slots: StartSlots | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.backend = backend
        self.hub = hub or hub_for(client)
        self.janitor = janitor or janitor_for(client)
        self.start_slots = start_slots or start_slots_for(settings)
        self.heartbeat_s = heartbeat_s
        self._redis_address = redis_address(client, settings)

    def start(self, context_key: str | None) -> LiveSandbox:
        """Launch and wait until ready; nothing is left behind if that fails.

        The wait for a start slot comes first and is not part of ``sandbox_start_timeout_s``.
        """
        sbx = self.launch(context_key, self.start_slots.acquire())
        try:
            self.await_ready(sbx)
        except BaseException:
            self.teardown(sbx.id, sbx)
            raise
        return sbx

    def launch(self, context_key: str | None, slot: StartSlot) -> LiveSandbox:
        """Start the runtime without waiting for it; ``context_key`` None: no context yet.

        The sandbox holds ``slot`` until its start is over (``LiveSandbox.end_start``).
        """
        sandbox_id = wire.new_id()
        sbx: LiveSandbox | None = None
        try:
            self.janitor.mark_alive(sandbox_id, self.settings.sandbox_alive_ttl_s)
            password = acl.create_user(self.client, sandbox_id, context_key)
            sbx = LiveSandbox(sandbox_id, self.hub.subscribe(keys.sandbox_to_host(sandbox_id)))
            sbx.start_slot = slot
            socket_path, host, port = self._redis_address
            bootstrap = wire.Bootstrap(
                sandbox_id=sandbox_id,
                redis_unix_socket=socket_path,
                redis_host=host,
                redis_port=port,
                username=keys.sandbox_user(sandbox_id),
                password=password,
                channel_in=sbx.channel_in,
                channel_out=keys.sandbox_to_host(sandbox_id),
                message_key_prefix=sbx.prefix,
                context_key=context_key,
                heartbeat_s=self.heartbeat_s,
                reconnect_s=self.settings.redis_retry_s,
            )
            sbx.launched_at = time.monotonic()
            sbx.process = self.backend.launch(bootstrap)
        except BaseException:
            slot.release()
            self.teardown(sandbox_id, sbx)
            raise
        return sbx

    def await_ready(self, sbx: LiveSandbox) -> None:
        """Wait for Ready; either way the start is over after this and its slot free."""
        try:
            if sbx.ready:
                return
            timeout_s = self.settings.sandbox_start_timeout_s
            left = timeout_s - (time.monotonic() - sbx.launched_at)
            self.await_message(
                sbx,
                # Heartbeats start with Ready: one stands in for a Ready lost in an outage.
                lambda m: isinstance(m, wire.Ready | wire.Heartbeat),
                None,
                left,
                f"sandbox was not ready within {timeout_s:g} s (sandbox_start_timeout_s)",
            )
            sbx.ready = True
        finally:
            sbx.end_start()

    def await_message(
        self,
        sbx: LiveSandbox,
        accept: Callable[[wire.ToHost], bool],
        reply_to: Request | None,
        timeout_s: float,
        timeout_text: str,
    ) -> wire.ToHost:
        """The first message ``accept`` takes; Fatal, death and timeout raise SandboxError.

        With ``reply_to`` (the request being answered), the stored copy of the reply is
        polled too and the request sent again if the runtime says it never got it (pub/sub
        may lose either).
        """
        deadline = time.monotonic() + timeout_s
        next_liveness = time.monotonic() + LIVENESS_CHECK_S
        next_poll = time.monotonic() + STORED_REPLY_POLL_S
        while True:
            raw = sbx.sub.get(0.1)
            if raw is not None:
                try:
                    msg = wire.decode_to_host(self.client, sbx.prefix, raw)
                except (wire.WireError, redis.RedisError) as exc:
                    log.warning("sandbox %s sent a malformed message: %s", sbx.id, exc)
                    continue
                if accept(msg):
                    return msg
                if reply_to is not None and isinstance(msg, wire.Heartbeat):
                    self.resend_if_lost(sbx, reply_to, msg)
                if isinstance(msg, wire.Fatal):
                    self.wait_exit(sbx, SHUTDOWN_WAIT_S)
                    raise SandboxError(f"sandbox failed to start: {msg.message} ({sbx.describe()})")
            now = time.monotonic()
            if now >= next_liveness:
                next_liveness = now + LIVENESS_CHECK_S
                if sbx.process is not None and not sbx.process.alive():
                    raise SandboxError(f"sandbox exited before it was ready: {sbx.describe()}")
            if reply_to is not None and now >= next_poll:
                next_poll = now + STORED_REPLY_POLL_S
                try:
                    stored = wire.fetch_reply_to_host(self.client, sbx.prefix, reply_to.id)
                except (ValueError, redis.RedisError):
                    stored = None
                if stored is not None and accept(stored):
                    return stored
            if now >= deadline:
                raise SandboxTimeout(f"{timeout_text}; {sbx.describe()}")

    def send(self, sbx: LiveSandbox, msg: wire.Message) -> None:
        try:
            wire.send(self.client, sbx.channel_in, sbx.prefix, msg)
        except redis.RedisError as exc:
            raise SandboxError(f"could not send to sandbox {sbx.id}: {exc}") from exc

    def send_request(self, sbx: LiveSandbox, request: Request) -> None:
        """Send a request whose answer will be awaited (see ``resend_if_lost``)."""
        sbx.request_sent_at = time.monotonic()
        self.send(sbx, request)

    def resend_if_lost(self, sbx: LiveSandbox, request: Request, beat: wire.Heartbeat) -> None:
        """Send ``request`` again if ``beat`` says the runtime never got it.

        Pub/sub drops what is published while the runtime's connection is down (a Redis
        restart); the runtime runs a cell, or loads a context, once per id.
        """
        if beat.last_received == request.id:
            return
        if time.monotonic() - sbx.request_sent_at < RESEND_AFTER_S:
            return
        log.warning(
            "sandbox %s never got %s %s; sending it again", sbx.id, request.TYPE, request.id
        )
        self.send_request(sbx, request)

    def shutdown(self, sbx: LiveSandbox) -> None:
        """Ask the runtime to stop, give it a moment, then tear everything down."""
        try:
            if sbx.process is not None and sbx.process.alive():
                self.send(sbx, wire.Shutdown(seq=sbx.next_seq(), id=wire.new_id()))
                self.wait_exit(sbx, SHUTDOWN_WAIT_S)
        except SandboxError as exc:
            log.warning("could not ask sandbox %s to shut down: %s", sbx.id, exc)
        finally:
            self.teardown(sbx.id, sbx)

    def teardown(self, sandbox_id: str, sbx: LiveSandbox | None) -> None:
        """Kill, then remove user, keys and subscription; every step runs even if one fails."""
        steps: list[tuple[str, Callable[[], object]]] = [
            ("free its start slot", lambda: sbx.end_start() if sbx else None),
            ("kill the process", lambda: sbx.process.kill() if sbx and sbx.process else None),
            ("delete the ACL user", lambda: acl.delete_user(self.client, sandbox_id)),
            ("drop its liveness key", lambda: self.janitor.mark_gone(sandbox_id)),
            ("delete its keys", lambda: acl.delete_keys(self.client, sandbox_id)),
            ("unsubscribe", lambda: sbx.sub.close() if sbx else None),
        ]
        for what, step in steps:
            try:
                step()
            except Exception:
                log.exception("sandbox %s: could not %s", sandbox_id, what)

    def teardown_later(self, sbx: LiveSandbox) -> None:
        self.janitor.submit(lambda: self.shutdown(sbx))

    @staticmethod
    def wait_exit(sbx: LiveSandbox, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while sbx.process is not None and sbx.process.alive() and time.monotonic() < deadline:
            time.sleep(0.02)


def redis_address(
    client: redis.Redis, settings: Settings
) -> tuple[str | None, str | None, int | None]:
    """How a sandbox reaches the same Redis as ``client``: a Unix socket if there is one."""
    kwargs = client.connection_pool.connection_kwargs
    if int(kwargs.get("db", 0) or 0) != 0:
        raise ConfigError(
            "sandboxes use Redis database 0 (the bootstrap carries no database number); "
            "point RLM_JOBS_REDIS_URL at /0"
        )
    socket_path = settings.sandbox_redis_socket or kwargs.get("path")
    host = kwargs.get("host")
    port = kwargs.get("port")
    return socket_path, host, int(port) if port is not None else None
