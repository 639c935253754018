"""``llm_query`` & co. inside the sandbox: a request on the wire, a blocking wait for its reply.

Tool calls (``sandbox.tools``) travel the same way: a ``ToolRequest`` answered by a
``SubcallReply``.

Any thread may call them (model code may run its own thread pool). The reader thread hands
replies to waiters by request id. Pub/sub may drop a message either way, so a waiter also
polls the copy of its reply the host stores now and then, and publishes its request again
(same id; the host serves each id once) in case the host never saw it: the reply is the
request's acknowledgement.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from sandbox.records import SubcallResult, WireError
from sandbox.wire import SubcallReply, SubcallRequest, ToolRequest, ToSandbox, new_id

# Pub/sub loss is rare, so the stored copy is checked only this often.
REPLY_POLL_S = 1.0
# An unanswered request is published again this often; sub-calls often take longer.
RESEND_S = 5.0


class _Waiter:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.results: list[SubcallResult] | None = None


class SubcallClient:
    def __init__(
        self,
        send: Callable[[SubcallRequest | ToolRequest], None],
        fetch_reply: Callable[[str], ToSandbox | None],
        next_seq: Callable[[], int],
    ) -> None:
        self._send = send
        self._fetch_reply = fetch_reply
        self._next_seq = next_seq
        self._waiters: dict[str, _Waiter] = {}
        self._lock = threading.Lock()

    def next_seq(self) -> int:
        return self._next_seq()

    def deliver(self, request_id: str, results: list[SubcallResult]) -> bool:
        """Hand a reply to the call waiting for it; False if none waits (finished or unknown)."""
        with self._lock:
            waiter = self._waiters.get(request_id)
        if waiter is None:
            return False
        waiter.results = results
        waiter.event.set()
        return True

    def request(
        self, kind: Literal["llm", "rlm"], prompts: list[str], model: str | None
    ) -> list[str]:
        request = SubcallRequest(
            seq=self._next_seq(), id=new_id(), kind=kind, prompts=prompts, model=model
        )
        try:
            results = self.exchange(request)
        except WireError as exc:
            raise ValueError(f"{exc}: send fewer or shorter prompts per call") from None
        texts = [r.text if r.ok else _as_error(r.text) for r in results[: len(prompts)]]
        missing = len(prompts) - len(texts)
        texts += ["Error: the orchestrator sent no answer for this prompt"] * missing
        return texts

    def exchange(self, request: SubcallRequest | ToolRequest) -> list[SubcallResult]:
        """Send ``request`` and wait for its ``SubcallReply``, publishing it again meanwhile.

        Raises WireError if the request is larger than the wire carries.
        """
        waiter = _Waiter()
        # Registered before sending: the reply may arrive before send() returns.
        with self._lock:
            self._waiters[request.id] = waiter
        try:
            self._send(request)
            next_resend = time.monotonic() + RESEND_S
            while not waiter.event.wait(REPLY_POLL_S):
                stored = self._fetch_reply(request.id)
                if isinstance(stored, SubcallReply):
                    waiter.results = stored.results
                    break
                if time.monotonic() >= next_resend:
                    next_resend = time.monotonic() + RESEND_S
                    self._send(request)
        finally:
            with self._lock:
                self._waiters.pop(request.id, None)
        return waiter.results or []


def _as_error(text: str) -> str:
    return text if text.startswith("Error") else f"Error: {text}"


def check_prompt(prompt: Any, func: str) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"{func}() takes the prompt as a str, not {type(prompt).__name__}")
    return prompt


def check_prompts(prompts: Any, func: str) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"{func}() takes a list of str prompts, not {type(prompts).__name__}")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        kind = type(prompts[bad[0]]).__name__
        raise TypeError(f"{func}(): every prompt must be a str; item {bad[0]} is {kind}")
    return list(prompts)


def check_model(model: Any, func: str) -> str | None:
    if model is not None and not isinstance(model, str):
        raise TypeError(f"{func}(): model must be a str or None, not {type(model).__name__}")
    return model


def make_functions(client: SubcallClient) -> dict[str, Callable[..., Any]]:
    """The four sub-call names the model sees."""

    def llm_query(prompt: str, model: str | None = None) -> str:
        p, m = check_prompt(prompt, "llm_query"), check_model(model, "llm_query")
        return client.request("llm", [p], m)[0]

    def llm_query_batched(prompts: list[str], model: str | None = None) -> list[str]:
        ps, m = check_prompts(prompts, "llm_query_batched"), check_model(model, "llm_query_batched")
        return client.request("llm", ps, m) if ps else []

    def rlm_query(prompt: str, model: str | None = None) -> str:
        p, m = check_prompt(prompt, "rlm_query"), check_model(model, "rlm_query")
        return client.request("rlm", [p], m)[0]

    def rlm_query_batched(prompts: list[str], model: str | None = None) -> list[str]:
        ps, m = check_prompts(prompts, "rlm_query_batched"), check_model(model, "rlm_query_batched")
        return client.request("rlm", ps, m) if ps else []

    return {
        "llm_query": llm_query,
        "llm_query_batched": llm_query_batched,
        "rlm_query": rlm_query,
        "rlm_query_batched": rlm_query_batched,
    }
