"""``ScriptedProvider``: an offline LLM server on 127.0.0.1 that the official SDKs talk to.

It serves ``scripted/<policy>`` models (see ``rlm_jobs.testing.policies``) over the OpenAI
chat-completions, OpenAI responses (background mode: billed when created, fetched by id
once its latency has passed, whoever asks; cancel) and Anthropic messages wire formats,
counts tokens by a fixed rule
(``wire.count_tokens``), keeps a usage ledger and a request log, and injects faults on
demand. Run it standalone for demos, docker compose and benchmarks::

    python -m rlm_jobs.testing.provider --port 8765 [--root-latency-s 0.2 --sub-latency-s 0.5]
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType, TracebackType

from rlm_jobs.testing.policies import POLICIES, Policy
from rlm_jobs.testing.server import ScriptedHTTPServer
from rlm_jobs.testing.state import (
    Fault,
    FaultKind,
    LedgerEntry,
    RequestRecord,
    ScriptedConfig,
    ScriptedState,
)

__all__ = ["ScriptedProvider", "main"]


class ScriptedProvider:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        root_latency_s: float = 0.0,
        sub_latency_s: float = 0.0,
        hang_s: float = 30.0,
        policies: Mapping[str, Policy] = POLICIES,
    ) -> None:
        self._address = (host, port)
        self._policies = policies
        self._state = ScriptedState(
            ScriptedConfig(
                root_latency_s=root_latency_s, sub_latency_s=sub_latency_s, hang_s=hang_s
            )
        )
        self._server: ScriptedHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> ScriptedProvider:
        if self._server is not None:
            raise RuntimeError("the scripted provider is already running")
        server = ScriptedHTTPServer(self._address, self._state, self._policies)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"scripted-provider:{server.server_address[1]}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.stopping.set()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        thread.join(timeout=5)

    def __enter__(self) -> ScriptedProvider:
        return self.start() if self._server is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- addresses ----------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        """Base URL for the Anthropic SDK (it appends /v1/messages)."""
        if self._server is None:
            raise RuntimeError("start the scripted provider first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def url(self) -> str:
        """Base URL for the OpenAI SDK and ``Settings.scripted_base_url``."""
        return f"{self.root_url}/v1"

    # ---- behaviour ----------------------------------------------------------------------------

    def configure(
        self,
        *,
        root_latency_s: float | None = None,
        sub_latency_s: float | None = None,
        hang_s: float | None = None,
    ) -> ScriptedConfig:
        return self._state.configure(
            root_latency_s=root_latency_s, sub_latency_s=sub_latency_s, hang_s=hang_s
        )

    @property
    def config(self) -> ScriptedConfig:
        return self._state.current_config()

    def inject(
        self,
        kind: FaultKind,
        count: int = 1,
        model: str | None = None,
        retry_after_s: float = 1.0,
        hang_s: float | None = None,
    ) -> int:
        """Make the next ``count`` requests for ``model`` (any model if None) fail as ``kind``.

        Kinds: "429" (with Retry-After: retry_after_s), "500", "hang" (held for hang_s, or the
        configured hang_s, then dropped unanswered), "malformed" (200 with a cut-off JSON
        body), "400", "401". Faults are used up in the order they were injected. Returns how
        many faulty responses are still pending.
        """
        fault = Fault(kind, count, model, retry_after_s, hang_s)
        return self._state.inject(fault)

    # ---- observations ----------------------------------------------------------------------

    def ledger(self) -> dict[str, LedgerEntry]:
        """Usage served per ``scripted/<policy>``: successful completions only."""
        return self._state.ledger()

    def requests(self) -> list[RequestRecord]:
        """Every completion request, in arrival order, faulted ones included."""
        return self._state.requests()

    def wait_for_requests(self, count: int, timeout_s: float = 10.0) -> list[RequestRecord]:
        return self._state.wait_for_requests(count, timeout_s)

    def reset(self) -> None:
        """Forget faults, usage and requests (latency settings stay)."""
        self._state.reset()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlm_jobs.testing.provider",
        description="Serve scripted/<policy> models over the OpenAI and Anthropic wire formats.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 inside a container")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--root-latency-s", type=float, default=0.0)
    parser.add_argument("--sub-latency-s", type=float, default=0.0)
    parser.add_argument("--hang-s", type=float, default=30.0)
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    provider = ScriptedProvider(
        args.host,
        args.port,
        root_latency_s=args.root_latency_s,
        sub_latency_s=args.sub_latency_s,
        hang_s=args.hang_s,
    ).start()
    print(provider.url, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        provider.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
