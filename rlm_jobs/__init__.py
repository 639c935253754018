"""rlm-jobs: Recursive Language Model jobs as a distributed service.

Library mode: ``RLM(...).completion(context, root_prompt=...)``. Service mode:
``Submitter`` (or the ``rlm-jobs`` CLI) with Celery workers from ``workers``. Documents:
``load_document(path)`` (PDF, DOCX, HTML, Markdown, text, CSV, JSON), ``load_documents(dir)``
(a batch), ``load_corpus(dir)`` (a folder as one context).
"""

from rlm_jobs.api import RLM, RLMCompletion
from rlm_jobs.batchfiles import load_corpus, load_document, load_documents
from rlm_jobs.config import Settings
from rlm_jobs.errors import (
    ConfigError,
    DocumentError,
    JobHandedOver,
    JobStopped,
    ProviderError,
    ProviderRetryableError,
    ReplayEnded,
    RLMJobsError,
    SandboxDied,
    SandboxError,
    SandboxTimeout,
    SessionError,
    SpecError,
    StorageError,
    ToolError,
)
from rlm_jobs.ingest import Ingestor
from rlm_jobs.models import JobResult, JobSpec, JobStatus, Limits, Usage
from rlm_jobs.submitter import BatchHandle, Document, JobHandle, Submitter

__all__ = [
    "RLM",
    "BatchHandle",
    "ConfigError",
    "Document",
    "DocumentError",
    "Ingestor",
    "JobHandedOver",
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
    "ReplayEnded",
    "SandboxDied",
    "SandboxError",
    "SandboxTimeout",
    "SessionError",
    "Settings",
    "SpecError",
    "StorageError",
    "Submitter",
    "ToolError",
    "Usage",
    "load_corpus",
    "load_document",
    "load_documents",
]
