"""Whether a final answer ends the job: without an answer schema it does; with one it must
parse as JSON and validate (``rlm_jobs.schema``), or the model is sent the problems and gets
another turn, at most ``Limits.max_schema_retries`` times; after that the job ends ``FAILED``
with the problems as its reason and the raw answer kept.
"""

from __future__ import annotations

from typing import Any

from rlm_jobs import prompts
from rlm_jobs.errors import JobStopped
from rlm_jobs.models import JobSpec, JobStatus
from rlm_jobs.schema import problems


class AnswerGate:
    """Decides whether a final answer ends the job; remembers the accepted value."""

    def __init__(self, schema: dict[str, Any] | None, max_retries: int) -> None:
        self.schema = schema
        self.max_retries = max_retries
        self.retries = 0
        self.value: Any = None

    @classmethod
    def for_spec(cls, spec: JobSpec) -> AnswerGate:
        return cls(spec.answer_schema, spec.limits.max_schema_retries)

    def review(self, answer: str) -> str | None:
        """None if ``answer`` ends the job; else the message that asks the model to fix it.

        Raises ``JobStopped`` (FAILED) once the retries are spent.
        """
        if self.schema is None:
            return None
        value, found = problems(self.schema, answer)
        if not found:
            self.value = value
            return None
        if self.retries >= self.max_retries:
            tries = f"after {self.retries} retr{'y' if self.retries == 1 else 'ies'}"
            raise JobStopped(
                JobStatus.FAILED,
                f"the final answer does not match the answer schema {tries}: {'; '.join(found)}",
            )
        self.retries += 1
        return prompts.schema_retry_message(found, self.retries, self.max_retries)
