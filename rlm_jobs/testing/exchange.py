"""One completion request on the scripted server: faults, policy, latency, billing."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from email.message import Message
from http import HTTPStatus
from typing import Protocol

from rlm_jobs.testing import wire
from rlm_jobs.testing.policies import Policy, is_root, respond
from rlm_jobs.testing.state import Fault, RequestRecord, Role, ScriptedState, StoredResponse

_log = logging.getLogger(__name__)

WORKER_HEADER = "X-RLM-Worker"
# What a "malformed" fault sends with status 200: JSON cut off mid-body.
MALFORMED_BODY = b'{"id": "scripted-malformed", "choices": [{"index": 0, "message": {"con'


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def response_status(state: ScriptedState, response_id: str, *, cancel: bool) -> object | None:
    """A background response as ``GET /v1/responses/{id}`` (or its cancel) shows it; None
    for an id the provider never made."""
    response = state.fetch_response(response_id, cancel=cancel)
    if response is None:
        return None
    return wire.response_object(
        response_id,
        response.model,
        response.status(time.monotonic()),
        created_at=response.created_at,
        background=True,
        text=response.text,
        input_tokens=response.input_tokens,
        output_tokens=response.output_tokens,
    )


class Responder(Protocol):
    """What an exchange needs from the HTTP request handler that received it."""

    close_connection: bool
    headers: Message

    def send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None: ...

    def send_bytes(
        self, status: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> None: ...


class Exchange:
    """One completion request, from fault check to recorded response."""

    def __init__(
        self,
        handler: Responder,
        request: wire.ChatRequest,
        path: str,
        *,
        state: ScriptedState,
        policies: Mapping[str, Policy],
        stopping: threading.Event,
        started: float,
        arrived: float,
    ) -> None:
        self.handler = handler
        self.state = state
        self.policies = policies
        # Set when the server stops: wakes a request waiting out its latency or hang.
        self.stopping = stopping
        self.request = request
        self.path = path
        # time.monotonic() for latency, time.time() for the log.
        self.started = started
        self.arrived = arrived
        self.role: Role = "root" if is_root(request.messages) else "sub"
        self.policy_name = request.model.removeprefix("scripted/")

    def record(self, outcome: str, input_tokens: int = 0, output_tokens: int = 0) -> None:
        headers = self.handler.headers
        self.state.record(
            RequestRecord(
                timestamp=self.arrived,
                path=self.path,
                wire=self.request.wire,
                model=self.request.model,
                role=self.role,
                worker=headers.get(WORKER_HEADER),
                user_agent=headers.get("User-Agent"),
                outcome=outcome,
                latency_s=time.monotonic() - self.started,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
        )

    def error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        body = wire.error_body(self.request.wire, status, message)
        self.handler.send_json(status, body, headers)

    def run(self) -> None:
        fault = self.state.take_fault(self.request.model)
        if fault is not None:
            self.fault(fault)
            return
        policy = self.policies.get(self.policy_name)
        if policy is None:
            self.record("404")
            self.error(
                404,
                f"The model `{self.request.model}` does not exist or you do not have access "
                f"to it. Scripted models: {', '.join(sorted(self.policies))}.",
            )
            return
        try:
            text = respond(policy, self.request.messages)
        except Exception as exc:  # a policy bug must reach the test as a 500, not a hang
            _log.exception("scripted policy %s failed", policy.name)
            self.record("500")
            self.error(500, f"scripted policy {policy.name!r} failed: {exc!r}")
            return
        self.answer(text)

    def answer(self, text: str) -> None:
        request = self.request
        truncated = False
        if request.max_tokens is not None and wire.count_tokens(text) > request.max_tokens:
            # Cut like a real model that ran out of tokens: mid-sentence, four chars a token.
            text, truncated = text[: request.max_tokens * 4], True
        tokens_in, tokens_out = wire.input_tokens(request.messages), wire.count_tokens(text)
        config = self.state.current_config()
        latency_s = config.root_latency_s if self.role == "root" else config.sub_latency_s
        if request.background:
            self.accept(text, tokens_in, tokens_out, truncated, latency_s)
            return
        if latency_s > 0 and self.stopping.wait(latency_s):
            self.handler.close_connection = True
            return
        # Billed and logged before sending, so a caller holding the reply sees both.
        self.state.bill(request.model, tokens_in, tokens_out)
        self.record("ok", tokens_in, tokens_out)
        if request.wire == "responses":
            status = "incomplete" if truncated else "completed"
            body = wire.response_object(
                new_response_id(),
                request.model,
                status,
                created_at=self.arrived,
                background=False,
                text=text,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
            )
        else:
            build = (
                wire.anthropic_message if request.wire == "anthropic" else wire.openai_completion
            )
            body = build(request.model, text, tokens_in, tokens_out, truncated)
        self.handler.send_json(200, body)

    def accept(
        self, text: str, tokens_in: int, tokens_out: int, truncated: bool, latency_s: float
    ) -> None:
        """A background response: billed now (the provider generates it whether or not
        anyone fetches it), ready ``latency_s`` from now."""
        request = self.request
        response_id = new_response_id()
        self.state.keep_response(
            response_id,
            StoredResponse(
                model=request.model,
                text=text,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                truncated=truncated,
                created_at=self.arrived,
                ready_at=time.monotonic() + latency_s,
            ),
        )
        self.state.bill(request.model, tokens_in, tokens_out)
        self.record("ok", tokens_in, tokens_out)
        body = wire.response_object(
            response_id, request.model, "queued", created_at=self.arrived, background=True
        )
        self.handler.send_json(200, body)

    def fault(self, fault: Fault) -> None:
        self.record(fault.kind)
        send_fault(self.handler, self.request.wire, fault, self.state, self.stopping)


def send_fault(
    handler: Responder,
    wire_name: wire.Wire,
    fault: Fault,
    state: ScriptedState,
    stopping: threading.Event,
) -> None:
    """Answer a request with an injected fault, as the real provider would fail it."""

    def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        handler.send_json(status, wire.error_body(wire_name, status, message), headers)

    kind = fault.kind
    if kind == "429":
        error(
            429,
            "Rate limit reached for scripted requests (injected fault).",
            {"Retry-After": f"{fault.retry_after_s:g}"},
        )
    elif kind == "500":
        error(500, "The scripted server had an error (injected fault).")
    elif kind == "400":
        error(400, "Invalid request: scripted rejects this request (injected fault).")
    elif kind == "401":
        error(401, "Incorrect API key provided: scripted-invalid (injected fault).")
    elif kind == "malformed":
        handler.send_bytes(HTTPStatus.OK, MALFORMED_BODY)
    else:  # hang: hold the request past the client's timeout, then drop it unanswered
        hang_s = fault.hang_s if fault.hang_s is not None else state.current_config().hang_s
        stopping.wait(hang_s)
        handler.close_connection = True
