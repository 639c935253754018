"""Offline test doubles that speak real wire protocols: the scripted LLM provider."""

from __future__ import annotations

from rlm_jobs.testing.policies import POLICIES, Conversation, Policy
from rlm_jobs.testing.provider import ScriptedProvider
from rlm_jobs.testing.state import (
    FAULT_KINDS,
    FaultKind,
    LedgerEntry,
    RequestRecord,
    ScriptedConfig,
)

__all__ = [
    "FAULT_KINDS",
    "POLICIES",
    "Conversation",
    "FaultKind",
    "LedgerEntry",
    "Policy",
    "RequestRecord",
    "ScriptedConfig",
    "ScriptedProvider",
]
