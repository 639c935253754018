"""rlm-jobs: Recursive Language Model jobs as a distributed service.

Library mode: ``RLM(...).completion(context, root_prompt=...)``. Service mode:
``Submitter`` (or the ``rlm-jobs`` CLI) with Celery workers from ``workers``.
"""

from rlm_jobs.api import RLM, RLMCompletion
from rlm_jobs.config import Settings
from rlm_jobs.errors import (
    ConfigError,
    JobStopped,
    ProviderError,
    ProviderRetryableError,
    RLMJobsError,
    SandboxDied,
    SandboxError,
    SandboxTimeout,
    SpecError,
    StorageError,
)
from rlm_jobs.models import JobResult, JobSpec, JobStatus, Limits, Usage
from rlm_jobs.submitter import BatchHandle, Document, JobHandle, Submitter

__all__ = [
    "RLM",
    "BatchHandle",
    "ConfigError",
    "Document",
    "JobHandle",
    "JobResult",
    "JobSpec",
    "JobStatus",
    "JobStopped",
    "Limits",
    "ProviderError",
    "ProviderRetryableError",
    "RLMCompletion",
    "RLMJobsError",
    "SandboxDied",
    "SandboxError",
    "SandboxTimeout",
    "Settings",
    "SpecError",
    "StorageError",
    "Submitter",
    "Usage",
]
