"""Library mode with documents: ``load_document``/``load_corpus`` into ``RLM.completion``,
and answers that must match a JSON Schema, with real sandboxes, Redis and HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rlm_jobs import RLM, load_corpus, load_document
from rlm_jobs.config import Settings
from rlm_jobs.ingest import Ingestor
from rlm_jobs.models import JobStatus
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import wait_sandboxes_gone
from tests.support.documents import INVOICE_SCHEMA, corpus_folder, invoices

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def library_settings(
    scripted_settings: Settings, redis_server: RedisServer, redis_client: redis.Redis,
    tmp_path: Path,
) -> Iterator[Settings]:  # fmt: skip
    yield scripted_settings.model_copy(
        update={
            "redis_url": redis_server.url,
            "sandbox_redis_socket": redis_server.unix_socket,
            "ingest_cache_dir": tmp_path / "cache",
        }
    )
    wait_sandboxes_gone(str(redis_server.workdir))


def test_library_mode_takes_documents_and_returns_structured_values(
    library_settings: Settings, scripted_provider: ScriptedProvider, tmp_path: Path
) -> None:
    invoices(tmp_path / "invoices")
    corpus_folder(tmp_path / "corpus")
    ingestor = Ingestor.from_settings(library_settings)
    with RLM(
        backend="scripted", backend_kwargs={"model_name": "fields"}, settings=library_settings
    ) as rlm:
        fixed = rlm.completion(
            load_document(tmp_path / "invoices" / "usd.txt", ingestor=ingestor),
            root_prompt="Fill in the invoice fields.",
            schema=INVOICE_SCHEMA,
        )
        never = rlm.completion(
            load_document(tmp_path / "invoices" / "eur.html", ingestor=ingestor),
            root_prompt="Fill in the invoice fields.",
            schema=INVOICE_SCHEMA,
        )
    assert fixed.status is JobStatus.COMPLETED, fixed.reason
    assert fixed.structured == {"invoice_number": "INV-2041", "total_due": 1250, "currency": "USD"}
    assert never.status is JobStatus.FAILED and never.structured is None
    assert never.reason.startswith("the final answer does not match the answer schema after 2")
    assert never.response is not None and json.loads(never.response)["currency"] == "EUR"

    with RLM(
        backend="scripted", backend_kwargs={"model_name": "corpus"}, settings=library_settings
    ) as rlm:
        corpus = rlm.completion(
            load_corpus(tmp_path / "corpus", ingestor=ingestor),
            root_prompt="What are the two halves of the vault code?",
        )
    assert corpus.status is JobStatus.COMPLETED, corpus.reason
    assert corpus.response is not None
    assert "4417" in corpus.response and "9032" in corpus.response
    assert corpus.structured is None
