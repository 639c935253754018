"""The scripted provider's shared state: latency settings, pending faults, usage ledger and
request log. One lock guards it all; request handlers run on many threads at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

FaultKind = Literal["429", "500", "hang", "malformed", "400", "401"]
FAULT_KINDS: tuple[FaultKind, ...] = ("429", "500", "hang", "malformed", "400", "401")
Role = Literal["root", "sub"]


def ledger_key(model: str) -> str:
    """Usage is keyed like the job's usage: ``scripted/<policy>``, however it was sent."""
    return model if model.startswith("scripted/") else f"scripted/{model}"


@dataclass
class ScriptedConfig:
    # Seconds each root / sub call takes before its answer is sent.
    root_latency_s: float = 0.0
    sub_latency_s: float = 0.0
    # How long a "hang" fault holds a request before dropping it unanswered.
    hang_s: float = 30.0


@dataclass
class Fault:
    kind: FaultKind
    remaining: int
    # ``scripted/<policy>`` or None for any model.
    model: str | None = None
    retry_after_s: float = 1.0
    hang_s: float | None = None


@dataclass
class LedgerEntry:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    # GETs of background responses: free, as at OpenAI, but counted.
    retrievals: int = 0
    # Background responses stopped by a cancel before they were done.
    cancellations: int = 0


@dataclass
class StoredResponse:
    """A background response: generated (and billed) when it was created, ready to be
    fetched once its latency has passed, whoever asks for it."""

    model: str
    text: str
    input_tokens: int
    output_tokens: int
    truncated: bool
    created_at: float
    # time.monotonic() when it is done.
    ready_at: float
    cancelled: bool = False

    def status(self, now: float) -> str:
        if self.cancelled:
            return "cancelled"
        if now < self.ready_at:
            return "in_progress"
        return "incomplete" if self.truncated else "completed"


@dataclass(frozen=True)
class RequestRecord:
    # time.time() when the request arrived.
    timestamp: float
    path: str
    wire: str
    model: str
    role: Role
    # The X-RLM-Worker header (host:pid of the caller), if sent.
    worker: str | None
    user_agent: str | None
    # "ok", an injected fault kind, or the HTTP status of a rejected request.
    outcome: str
    latency_s: float
    input_tokens: int = 0
    output_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScriptedState:
    config: ScriptedConfig = field(default_factory=ScriptedConfig)
    _faults: list[Fault] = field(default_factory=list)
    _ledger: dict[str, LedgerEntry] = field(default_factory=dict)
    _requests: list[RequestRecord] = field(default_factory=list)
    _responses: dict[str, StoredResponse] = field(default_factory=dict)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def configure(
        self,
        *,
        root_latency_s: float | None = None,
        sub_latency_s: float | None = None,
        hang_s: float | None = None,
    ) -> ScriptedConfig:
        updates = {
            "root_latency_s": root_latency_s,
            "sub_latency_s": sub_latency_s,
            "hang_s": hang_s,
        }
        for name, value in updates.items():
            if value is not None and value < 0:
                raise ValueError(f"{name} cannot be negative")
        with self._changed:
            self.config = replace(
                self.config, **{k: float(v) for k, v in updates.items() if v is not None}
            )
            return replace(self.config)

    def current_config(self) -> ScriptedConfig:
        with self._changed:
            return replace(self.config)

    def inject(self, fault: Fault) -> int:
        if fault.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {fault.kind!r}; known: {', '.join(FAULT_KINDS)}")
        if fault.remaining < 1:
            raise ValueError("a fault needs count >= 1")
        if fault.model is not None:
            fault.model = ledger_key(fault.model)
        with self._changed:
            self._faults.append(fault)
            return sum(f.remaining for f in self._faults)

    def take_fault(self, model: str) -> Fault | None:
        """The first pending fault for ``model`` (or for any model), used up by one request."""
        key = ledger_key(model)
        with self._changed:
            for i, fault in enumerate(self._faults):
                if fault.model is None or fault.model == key:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        del self._faults[i]
                    return replace(fault)
        return None

    def bill(self, model: str, input_tokens: int, output_tokens: int) -> None:
        with self._changed:
            entry = self._ledger.setdefault(ledger_key(model), LedgerEntry())
            entry.calls += 1
            entry.input_tokens += input_tokens
            entry.output_tokens += output_tokens

    def keep_response(self, response_id: str, response: StoredResponse) -> None:
        with self._changed:
            self._responses[response_id] = response

    def response_model(self, response_id: str) -> str | None:
        with self._changed:
            response = self._responses.get(response_id)
            return None if response is None else response.model

    def fetch_response(self, response_id: str, *, cancel: bool = False) -> StoredResponse | None:
        """A background response by id (a GET counted as a retrieval), cancelled first if
        asked and not done yet; None for an id it never made."""
        with self._changed:
            response = self._responses.get(response_id)
            if response is None:
                return None
            entry = self._ledger.setdefault(ledger_key(response.model), LedgerEntry())
            if not cancel:
                entry.retrievals += 1
            elif time.monotonic() < response.ready_at and not response.cancelled:
                response.cancelled = True
                entry.cancellations += 1
            return replace(response)

    def ledger(self) -> dict[str, LedgerEntry]:
        with self._changed:
            return {model: replace(entry) for model, entry in self._ledger.items()}

    def record(self, entry: RequestRecord) -> None:
        with self._changed:
            self._requests.append(entry)
            self._changed.notify_all()

    def requests(self) -> list[RequestRecord]:
        with self._changed:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout_s: float) -> list[RequestRecord]:
        """Block until at least ``count`` requests were seen; TimeoutError past the deadline."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while len(self._requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"saw {len(self._requests)} requests within {timeout_s:g}s, wanted {count}"
                    )
                self._changed.wait(left)
            return list(self._requests)

    def reset(self) -> None:
        """Forget faults, usage and requests; latency settings stay as configured."""
        with self._changed:
            self._faults.clear()
            self._ledger.clear()
            self._requests.clear()
            self._responses.clear()
            self._changed.notify_all()
