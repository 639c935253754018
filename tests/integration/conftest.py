"""A real scripted provider per test, and settings pointing every provider at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rlm_jobs.config import Settings
from rlm_jobs.testing import ScriptedProvider


@pytest.fixture
def scripted_provider() -> Iterator[ScriptedProvider]:
    with ScriptedProvider() as provider:
        yield provider


@pytest.fixture
def scripted_settings(scripted_provider: ScriptedProvider) -> Settings:
    """Every provider aimed at the scripted server, with fast timeouts and backoff.

    The Anthropic SDK talks to the same server (it speaks both wire formats); the keys are
    dummies the server ignores.
    """
    return Settings(
        scripted_base_url=scripted_provider.url,
        anthropic_base_url=scripted_provider.root_url,
        anthropic_api_key="scripted-test-key",
        openai_base_url=scripted_provider.url,
        openai_api_key="scripted-test-key",
        request_timeout_s=2.0,
        max_retries=3,
        retry_base_s=0.01,
        retry_max_s=2.0,
    )
