"""One started sandbox container: liveness, kill (which removes it), how it ended."""

from __future__ import annotations

import signal
import threading
from typing import Any

from rlm_jobs.errors import SandboxError
from rlm_jobs.sandboxes.backends.docker.sdk import is_not_found

# Lines of the runtime's log that describe_exit quotes.
LOG_TAIL_LINES = 20
LOG_TAIL_CHARS = 2000


class DockerSandbox:
    """A started sandbox container; ``kill`` removes it (safe to call twice)."""

    def __init__(
        self, container: Any, *, memory_mb: int, api_errors: tuple[type[BaseException], ...]
    ) -> None:
        self._container = container
        self._memory_mb = memory_mb
        self._api_errors = api_errors
        self._lock = threading.Lock()
        self._killed_by_us = False
        self._released = False
        self._final_state: dict[str, Any] = {}
        self._final_logs = ""

    @property
    def container_id(self) -> str:
        return str(self._container.id)

    @property
    def name(self) -> str:
        return str(self._container.name)

    def alive(self) -> bool:
        if self._released:
            return False
        state = self._state()
        return bool(state.get("Running")) or state.get("Status") == "created"

    def kill(self) -> None:
        with self._lock:
            if self._released:
                return
            state = self._state()
            if state.get("Running"):
                self._killed_by_us = True
            self._final_logs = self._logs_tail()
            try:
                # force: SIGKILL first if running; the container's tmpfs go with it.
                self._container.remove(force=True)
            except self._api_errors as exc:
                if not is_not_found(exc):
                    raise SandboxError(
                        f"could not remove sandbox container {self.name}: {exc}"
                    ) from exc
            # What it was when we removed it; a running one was killed by us.
            self._final_state = {**state, "Running": False, "Status": "removed"} if state else {}
            self._released = True

    def describe_exit(self) -> str:
        state = self._final_state if self._released else self._state()
        if not state:
            return f"container {self.name} is gone"
        if state.get("Running") or state.get("Status") == "created":
            return f"container {self.name} is still running"
        code = state.get("ExitCode")
        if state.get("OOMKilled"):
            how = f"killed: out of memory (limit {self._memory_mb} MB)"
        elif self._killed_by_us:
            how = "killed by the orchestrator"
        elif isinstance(code, int) and 128 < code < 128 + signal.NSIG:
            # tini (pid 1) exits with 128 + the signal that ended the runtime.
            how = f"killed by {_signal_name(code - 128)}"
        else:
            how = f"exited with code {code}"
        if state.get("Error"):
            how += f" ({state['Error']})"
        tail = self._final_logs if self._released else self._logs_tail()
        return f"{how}; runtime log: {tail.strip()!r}" if tail.strip() else how

    def _state(self) -> dict[str, Any]:
        try:
            self._container.reload()
        except self._api_errors as exc:
            if is_not_found(exc):
                return {}
            raise SandboxError(f"cannot inspect sandbox container {self.name}: {exc}") from exc
        return dict(self._container.attrs.get("State") or {})

    def _logs_tail(self) -> str:
        try:
            raw = self._container.logs(stdout=True, stderr=True, tail=LOG_TAIL_LINES)
        except self._api_errors:
            return ""
        return bytes(raw).decode("utf-8", "replace")[-LOG_TAIL_CHARS:]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
