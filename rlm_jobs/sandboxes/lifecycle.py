"""Starting, waiting on and ending one sandbox: the steps a session and a pool share.

A start is: a start slot (``StartSlots``), liveness key, ACL user, its channel on the hub
(subscribed *before* launch, so ``Ready`` cannot be missed), the backend's launch with the
bootstrap, then the ready handshake, which frees the slot. Waiting for a message is one
loop (``Launcher.await_message``, built on ``poll``) for every wait: ready, context loaded,
a cell's result. An end is: ask the runtime to stop, wait briefly, kill, delete the ACL
user, its liveness key and keys, unsubscribe; every step runs even if one fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis

from rlm_jobs import keys, timing
from rlm_jobs.config import Settings
from rlm_jobs.errors import ConfigError, SandboxDied, SandboxError, SandboxTimeout
from rlm_jobs.redis_socket import sandbox_redis_socket
from rlm_jobs.sandboxes import acl
from rlm_jobs.sandboxes.base import SandboxBackend, SandboxProcess
from rlm_jobs.sandboxes.channel import SandboxChannel
from rlm_jobs.sandboxes.services import SandboxServices
from rlm_jobs.sandboxes.start_slots import StartSlot
from sandbox import wire
from sandbox.records import ToolSpec

log = logging.getLogger(__name__)

# What the host sends and then waits on an answer for.
Request = wire.ExecCell | wire.LoadContext

# Longest a wait blocks on the channel before it looks at its deadline again.
POLL_S = 0.25
# Messages one poll reads at most: a flooding sandbox cannot keep a wait from its deadline.
MAX_MESSAGES_PER_POLL = 256

Accept = Callable[[wire.ToHost], bool]
OnMessage = Callable[[wire.ToHost], None]


@dataclass
class LiveSandbox:
    id: str
    channel: SandboxChannel
    process: SandboxProcess | None = None
    # Set once the runtime said Ready (a pool hands out sandboxes that are still starting).
    ready: bool = False
    # Set when a wait saw the runtime gone (after reading what it sent before it went).
    exited: bool = False
    # Held until the start is over (ready or failed); whoever waits for Ready frees it.
    start_slot: StartSlot | None = None
    launched_at: float = field(default_factory=time.monotonic)
    # When the request now awaited (a cell, a context load) was last sent (monotonic), to
    # pace sending it again (``Launcher.resend_if_lost``).
    request_sent_at: float = 0.0

    def next_seq(self) -> int:
        return self.channel.next_seq()

    def describe(self) -> str:
        return "no process" if self.process is None else self.process.describe_exit()

    def end_start(self) -> None:
        """The start is over (ready, failed or abandoned): the next start may run."""
        slot, self.start_slot = self.start_slot, None
        if slot is not None:
            slot.release()


class Launcher:
    """Starts, waits on and ends sandboxes of one backend."""

    def __init__(
        self, services: SandboxServices, backend: SandboxBackend, *, heartbeat_s: float = 5.0
    ) -> None:
        self.services = services
        self.client = services.client
        self.settings = services.settings
        self.backend = backend
        self.heartbeat_s = heartbeat_s
        self._redis_address = redis_address(self.client, self.settings)

    def start(
        self,
        context_key: str | None,
        *,
        seed: int = 0,
        context_index: int = 0,
        tools: Sequence[ToolSpec] = (),
    ) -> LiveSandbox:
        """Launch and wait until ready; nothing is left behind if that fails.

        The wait for a start slot comes first and is not part of ``sandbox_start_timeout_s``.
        """
        sbx = self.launch(
            context_key,
            self.services.start_slots.acquire(),
            seed=seed,
            context_index=context_index,
            tools=tools,
        )
        try:
            self.await_ready(sbx)
        except BaseException:
            self.teardown(sbx.id, sbx)
            raise
        return sbx

    def launch(
        self,
        context_key: str | None,
        slot: StartSlot,
        *,
        seed: int = 0,
        context_index: int = 0,
        tools: Sequence[ToolSpec] = (),
    ) -> LiveSandbox:
        """Start the runtime without waiting for it; ``context_key`` None: no context yet.

        ``seed`` seeds ``random`` once the context is loaded (a pooled sandbox gets its seed,
        its context index and its tools with ``LoadContext``). The sandbox holds ``slot``
        until its start is over (``LiveSandbox.end_start``).
        """
        sandbox_id = wire.new_id()
        sbx: LiveSandbox | None = None
        try:
            self.services.janitor.mark_alive(sandbox_id, self.settings.sandbox_alive_ttl_s)
            password = acl.create_user(
                self.client, self.services.identities, sandbox_id, context_key
            )
            channel = SandboxChannel(self.client, self.services.hub, sandbox_id)
            sbx = LiveSandbox(sandbox_id, channel)
            sbx.start_slot = slot
            socket_path, host, port = self._redis_address
            bootstrap = wire.Bootstrap(
                sandbox_id=sandbox_id,
                redis_unix_socket=socket_path,
                redis_host=host,
                redis_port=port,
                username=keys.sandbox_user(sandbox_id),
                password=password,
                channel_in=sbx.channel.channel_in,
                channel_out=sbx.channel.channel_out,
                message_key_prefix=sbx.channel.prefix,
                context_key=context_key,
                seed=seed,
                context_index=context_index,
                tools=list(tools),
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
            msg = self.await_message(
                sbx,
                lambda m: isinstance(m, (wire.Ready, wire.Fatal)),
                timeout_s=timeout_s - (time.monotonic() - sbx.launched_at),
                what=f"sandbox was not ready within {timeout_s:g} s (sandbox_start_timeout_s)",
            )
            self.raise_if_fatal(sbx, msg)
            sbx.ready = True
        except SandboxDied as exc:
            raise SandboxDied(f"sandbox exited before it was ready: {exc}") from exc
        finally:
            sbx.end_start()

    def raise_if_fatal(self, sbx: LiveSandbox, msg: wire.ToHost) -> None:
        if isinstance(msg, wire.Fatal):
            self.wait_exit(sbx, timing.SANDBOX_SHUTDOWN_WAIT_S)
            raise SandboxError(f"sandbox failed to start: {msg.message} ({sbx.describe()})")

    # ---- waiting -------------------------------------------------------------------------

    def poll(
        self,
        sbx: LiveSandbox,
        accept: Accept,
        *,
        on_other: OnMessage | None = None,
        timeout_s: float = 0.0,
    ) -> wire.ToHost | None:
        """What the runtime has sent (waiting up to ``timeout_s`` for the first message):
        the first message ``accept`` takes, or None. The others go to ``on_other``."""
        msg = sbx.channel.receive(timeout_s)
        for _ in range(MAX_MESSAGES_PER_POLL):
            if msg is None:
                return None
            if accept(msg):
                return msg
            if on_other is not None:
                on_other(msg)
            msg = sbx.channel.receive(0)
        return None

    def await_message(
        self,
        sbx: LiveSandbox,
        accept: Accept,
        *,
        timeout_s: float,
        what: str,
        on_other: OnMessage | None = None,
        stop: Callable[[], str | None] | None = None,
        request: Request | None = None,
    ) -> wire.ToHost:
        """The first message ``accept`` takes; the others go to ``on_other`` meanwhile.

        Raises ``SandboxTimeout`` (saying ``what``) once ``timeout_s`` has passed,
        ``SandboxDied`` when the runtime ended without sending it, and ``SandboxError``
        when ``stop`` gives a reason. A runtime that sent it and then ended is not an
        error: the message is returned and ``sbx.exited`` set.

        With ``request`` (what the message answers), a heartbeat saying the runtime never
        got it has it sent again (pub/sub drops what is published while the runtime's
        connection is down, as in a Redis restart).
        """
        deadline = time.monotonic() + timeout_s
        next_liveness = time.monotonic() + timing.SANDBOX_LIVENESS_CHECK_S
        if request is not None:
            handle_other = on_other

            def on_other(msg: wire.ToHost) -> None:
                if isinstance(msg, wire.Heartbeat):
                    self.resend_if_lost(sbx, request, msg)
                if handle_other is not None:
                    handle_other(msg)

        while True:
            reason = stop() if stop is not None else None
            if reason:
                raise SandboxError(reason)
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxTimeout(f"{what}; {sbx.describe()}")
            msg = self.poll(sbx, accept, on_other=on_other, timeout_s=min(POLL_S, left))
            if msg is not None:
                return msg
            if time.monotonic() >= next_liveness:
                next_liveness = time.monotonic() + timing.SANDBOX_LIVENESS_CHECK_S
                if sbx.process is not None and not sbx.process.alive():
                    sbx.exited = True
                    # What it published before it went is still on its way or queued.
                    last = self.poll(sbx, accept, on_other=on_other, timeout_s=POLL_S)
                    if last is not None:
                        return last
                    raise SandboxDied(sbx.describe())

    # ---- sending and ending --------------------------------------------------------------

    def send(self, sbx: LiveSandbox, msg: wire.Message) -> None:
        sbx.channel.send(msg)

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
        if time.monotonic() - sbx.request_sent_at < timing.SANDBOX_RESEND_AFTER_S:
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
                self.wait_exit(sbx, timing.SANDBOX_SHUTDOWN_WAIT_S)
        except SandboxError as exc:
            log.warning("could not ask sandbox %s to shut down: %s", sbx.id, exc)
        finally:
            self.teardown(sbx.id, sbx)

    def teardown(self, sandbox_id: str, sbx: LiveSandbox | None) -> None:
        """Kill, then remove keys, user and subscription; every step runs even if one fails.

        With ``services.redis_lost`` (the owner is ending and Redis does not answer) only
        the process is stopped: each Redis step would wait out ``redis_retry_s`` first, and
        the hub, closed with the services, drops the subscription."""
        janitor = self.services.janitor
        steps: list[tuple[str, Callable[[], object]]] = [
            ("free its start slot", lambda: sbx.end_start() if sbx else None),
            ("kill the process", lambda: sbx.process.kill() if sbx and sbx.process else None),
        ]
        if not self.services.redis_lost:
            # Keys before the user, the user before its liveness key: a process that dies
            # part way leaves a user without a liveness key, which a sweep finishes.
            steps += [
                ("delete its keys", lambda: acl.delete_keys(self.client, sandbox_id)),
                (
                    "delete the ACL user",
                    lambda: acl.delete_user(self.client, self.services.identities, sandbox_id),
                ),
                ("drop its liveness key", lambda: janitor.mark_gone(sandbox_id)),
                ("unsubscribe", lambda: sbx.channel.close() if sbx else None),
            ]
        for what, step in steps:
            try:
                step()
            except Exception:
                log.exception("sandbox %s: could not %s", sandbox_id, what)

    def teardown_later(self, sbx: LiveSandbox) -> None:
        self.services.janitor.submit(lambda: self.shutdown(sbx))

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
    socket_path = sandbox_redis_socket(client, settings)
    host = kwargs.get("host")
    port = kwargs.get("port")
    return socket_path, host, int(port) if port is not None else None
