"""The scripted provider's HTTP server: chat completions, messages and responses (with
``GET /v1/responses/{id}`` and its ``/cancel`` for background ones), plus control endpoints
under ``/_scripted/`` (ledger, requests, reset, config, faults, health).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from rlm_jobs.testing import wire
from rlm_jobs.testing.exchange import Exchange, response_status, send_fault
from rlm_jobs.testing.policies import Policy
from rlm_jobs.testing.state import Fault, ScriptedState

_log = logging.getLogger(__name__)

_COMPLETION_ROUTES: dict[str, Callable[[object], wire.ChatRequest]] = {
    "/v1/chat/completions": wire.parse_openai,
    "/chat/completions": wire.parse_openai,
    "/v1/messages": wire.parse_anthropic,
    "/v1/responses": wire.parse_responses,
    "/responses": wire.parse_responses,
}


def _response_id(path: str) -> str:
    """The id in ``/v1/responses/{id}`` (or ``/responses/{id}``), or ''."""
    for prefix in ("/v1/responses/", "/responses/"):
        rest = path.removeprefix(prefix)
        if rest != path and rest and "/" not in rest:
            return rest
    return ""


class ScriptedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Handler threads are daemons; joining them on close would wait on idle keep-alives.
    block_on_close = False
    # Benchmarks open hundreds of connections at once; the default backlog of 5 drops them.
    request_queue_size = 1024

    def __init__(
        self, address: tuple[str, int], state: ScriptedState, policies: Mapping[str, Policy]
    ) -> None:
        super().__init__(address, ScriptedHandler)
        self.state = state
        self.policies = policies
        # Set on stop: wakes every handler waiting out a latency or a hang.
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request (the fault tests kill workers) resets its connection:
        # that is the test going to plan, not a server error worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            _log.debug("client %s went away mid-request", client_address)
            return
        super().handle_error(request, client_address)

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def drop_connections(self) -> None:
        """Unblock handler threads parked on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class ScriptedHandler(BaseHTTPRequestHandler):
    # Keep-alive, as the SDKs' connection pools expect.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body waits for the
    # client's delayed ACK and every call gains ~40 ms.
    disable_nagle_algorithm = True
    server: ScriptedHTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s " + format, self.address_string(), *args)

    # ---- plumbing -------------------------------------------------------------------------

    def _read_json(self) -> object:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def send_bytes(
        self, status: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            # The client gave up (its timeout fired during our latency): nothing to tell it.
            self.close_connection = True

    def send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), headers)

    def _path(self) -> str:
        path = urlsplit(self.path).path.rstrip("/")
        # Control endpoints answer under the /v1 base URL too.
        return path[3:] if path.startswith("/v1/_scripted/") else path

    # ---- routes ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        state = self.server.state
        path = self._path()
        if path == "/_scripted/ledger":
            self.send_json(200, {m: vars(e) for m, e in state.ledger().items()})
        elif path == "/_scripted/requests":
            self.send_json(200, [r.to_json() for r in state.requests()])
        elif path == "/_scripted/config":
            self.send_json(200, vars(state.current_config()))
        elif path == "/_scripted/health":
            self.send_json(200, {"ok": True, "policies": sorted(self.server.policies)})
        elif response_id := _response_id(path):
            self._response(response_id, cancel=False)
        else:
            self.send_json(404, {"error": {"message": f"no route GET {path}"}})

    def do_POST(self) -> None:
        path = self._path()
        parse = _COMPLETION_ROUTES.get(path)
        if parse is not None:
            self._complete(path, parse)
            return
        if path.endswith("/cancel") and (response_id := _response_id(path[: -len("/cancel")])):
            self._read_json()  # read, not needed: the connection stays usable
            self._response(response_id, cancel=True)
            return
        try:
            body = self._read_json()
            self._control(path, body if isinstance(body, dict) else {})
        except (ValueError, TypeError) as exc:
            self.send_json(400, {"error": {"message": str(exc)}})

    def _control(self, path: str, body: dict[str, Any]) -> None:
        state = self.server.state
        if path == "/_scripted/reset":
            state.reset()
            self.send_json(200, {"ok": True})
        elif path == "/_scripted/config":
            self.send_json(200, vars(state.configure(**body)))
        elif path == "/_scripted/faults":
            fault = Fault(
                kind=str(body.get("kind")),  # type: ignore[arg-type]  # checked by inject
                remaining=int(body.get("count", 1)),
                model=body.get("model"),
                retry_after_s=float(body.get("retry_after_s", 1.0)),
                hang_s=None if body.get("hang_s") is None else float(body["hang_s"]),
            )
            self.send_json(200, {"pending": state.inject(fault)})
        else:
            self.send_json(404, {"error": {"message": f"no route POST {path}"}})

    def _response(self, response_id: str, *, cancel: bool) -> None:
        state = self.server.state
        # Faults injected for a model fail its polls too (not its cancels).
        model = None if cancel else state.response_model(response_id)
        fault = state.take_fault(model) if model is not None else None
        if fault is not None:
            send_fault(self, "responses", fault, state, self.server.stopping)
            return
        body = response_status(state, response_id, cancel=cancel)
        if body is None:
            message = f"No response found with id '{response_id}'."
            self.send_json(404, wire.error_body("responses", 404, message))
        else:
            self.send_json(200, body)

    # ---- completions ----------------------------------------------------------------------

    def _complete(self, path: str, parse: Callable[[object], wire.ChatRequest]) -> None:
        started, arrived = time.monotonic(), time.time()
        wire_name: wire.Wire = "anthropic" if path.endswith("/messages") else "openai"
        try:
            request = parse(self._read_json())
        except ValueError as exc:  # WireError and json.JSONDecodeError alike
            self.send_json(400, wire.error_body(wire_name, 400, str(exc)))
            return
        server = self.server
        assert isinstance(server, ScriptedHTTPServer)
        Exchange(
            self,
            request,
            path,
            state=server.state,
            policies=server.policies,
            stopping=server.stopping,
            started=started,
            arrived=arrived,
        ).run()
