"""Every error rlm-jobs raises on purpose.

::

    RLMJobsError
    ├── ConfigError              settings or arguments that cannot work (unknown provider, ...)
    ├── SpecError                a job spec, batch file or wire message that fails validation
    │   └── DocumentError        a file that cannot be read as a document (corrupt, no text, binary)
    ├── ProviderError            an LLM call that failed for good (4xx other than 429, bad body)
    │   └── ProviderRetryableError   429, 5xx, timeouts, connection drops: worth another try
    ├── SandboxError             the sandbox could not start, died, or broke the wire protocol
    │   ├── SandboxTimeout       no answer from the sandbox within its deadline
    │   └── SandboxDied          the sandbox's runtime ended while the host waited for it
    ├── StorageError             a record or blob that should be in Redis is not
    ├── ToolError                a tool call refused at its boundary (arguments, result, time)
    ├── SessionError             a session that is unknown, ended, or busy with another job
    ├── JobStopped               a job ended early (limit, cancel); carries its status
    ├── JobHandedOver            a run stopped unfinished so another can resume the job
    └── ReplayEnded              a replay-only run reached what its journal does not hold

Outside the tree on purpose: ``CallAbandoned``, an llm worker's call that stopped being its
own while it ran (every handler of ``RLMJobsError`` would turn it into an answer).

Retry decisions look at the type, never at the message text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlm_jobs.status import JobStatus


class RLMJobsError(Exception):
    """Root of every error raised by rlm-jobs."""


class ConfigError(RLMJobsError):
    """Settings or arguments that cannot work."""


class SpecError(RLMJobsError):
    """Input that fails validation at a boundary."""


class DocumentError(SpecError):
    """A file that cannot be read as a document: corrupt, without text, or an unknown binary.

    ``path`` names the file; ``reason`` says why, without the path, for result rows.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ProviderError(RLMJobsError):
    """An LLM provider call that failed and should not be retried.

    ``code`` names the failure for metrics: the HTTP status (``"429"``), or ``"timeout"``,
    ``"connection"``, ``"malformed"``, ``"client"`` when there was none.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code or (str(status_code) if status_code is not None else "error")


class ProviderRetryableError(ProviderError):
    """An LLM provider call that failed in a way worth retrying."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, code=code)
        self.retry_after_s = retry_after_s


class SandboxError(RLMJobsError):
    """The sandbox could not start, died, or broke the wire protocol."""


class SandboxTimeout(SandboxError):
    """The sandbox did not answer within its deadline."""


class SandboxDied(SandboxError):
    """The sandbox's runtime ended (exited, was killed) while the host waited for it."""


class StorageError(RLMJobsError):
    """A record or blob that should be in Redis is missing or unreadable."""


class ToolError(RLMJobsError):
    """A tool call that cannot be made or answered: arguments or a result that are not JSON
    or too large, arguments the tool does not take, a tool that raised or ran too long. The
    message is what the cell's ``ToolError`` says."""


class SessionError(RLMJobsError):
    """A session that cannot take the request: unknown, ended, expired, or still busy with
    another job."""


class JobStopped(RLMJobsError):
    """A job ended before a final answer: a limit was hit or it was cancelled."""

    def __init__(self, status: JobStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class JobHandedOver(RLMJobsError):
    """This run of a job stopped without a result: its worker is shutting down, or another
    worker took the job over. The journal is intact; the next run resumes by replay."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReplayEnded(RLMJobsError):
    """A run that may only replay (a session's earlier job, rebuilding the REPL) reached a
    step its journal does not answer: the state is rebuilt up to there, nothing runs live."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CallAbandoned(Exception):
    """A call stopped being this worker's while it ran (answered or given up meanwhile, or
    taken over by another worker): nothing is answered from here. Not an ``RLMJobsError``,
    so no retry and no error result catches it; the llm worker does."""
