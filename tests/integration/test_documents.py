"""Real documents in, structured answers out, as users run them.

Every file is made here (PDFs byte by byte, DOCX through python-docx, HTML, a Latin-1
text). A mixed folder runs through ``rlm-jobs run`` on its private local stack; corpora
and schemas run through the CLI against real Celery workers (the ``stack`` of
test_cli.py, started again for this module), and through library mode. The scripted
model only sees what the loop shows it: the answers come from its code and sub-calls.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from rlm_jobs.redis_server import RedisServer
from tests.support import Stack, cli, read_jsonl
from tests.support.documents import (
    INVOICE_SCHEMA,
    binary_blob,
    corpus_folder,
    corrupt_pdf,
    docx_file,
    invoices,
    pdf_with_text,
    scanned_pdf,
)

pytestmark = pytest.mark.timeout(300)
QUESTION = "What is the secret code?"


def env_with_cache(base: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**base, "RLM_JOBS_INGEST_CACHE_DIR": str(tmp_path / "ingest-cache")}


def mixed_folder(directory: Path) -> dict[str, str]:
    """Readable documents in four formats, each hiding a code, and three unreadable files.

    Returns the readable file names -> their codes.
    """
    directory.mkdir()
    filler = ["Minutes of the weekly meeting.", "Nothing of note was decided."]
    (directory / "report.pdf").write_bytes(
        pdf_with_text([filler, ["Appendix.", "The secret code is PDF-31."]])
    )
    (directory / "memo.docx").write_bytes(
        docx_file("Memo", [*filler, "The secret code is DOCX-52."], [["a", "b"], ["1", "2"]])
    )
    (directory / "page.html").write_text(
        "<html><head><title>Status</title><script>var x = 'The secret code is FAKE';</script>"
        "</head><body><h1>Status</h1><p>All green.</p><p>The secret code is HTML-64.</p>"
        "</body></html>"
    )
    (directory / "notes-latin1.txt").write_bytes(
        "Réunion du comité: le café était fermé, la crème brûlée très appréciée.\n"
        "The secret code is LATIN-77.\n".encode("latin-1")
    )
    (directory / "scan.pdf").write_bytes(scanned_pdf(2))
    (directory / "broken.pdf").write_bytes(corrupt_pdf())
    (directory / "blob.bin").write_bytes(binary_blob())
    return {
        "memo.docx": "DOCX-52",
        "notes-latin1.txt": "LATIN-77",
        "page.html": "HTML-64",
        "report.pdf": "PDF-31",
    }


# ---- item 1: a folder of real formats, the unreadable ones failing alone ---------------------


def test_run_reads_every_format_and_fails_only_the_unreadable_files(tmp_path: Path) -> None:
    # Given a folder of a PDF, a DOCX, an HTML page, a Latin-1 text, a scanned PDF, a corrupt
    # PDF and a binary file, and no broker: `run` starts its own stack and scripted model
    codes = mixed_folder(tmp_path / "docs")
    out = tmp_path / "results.jsonl"
    env = env_with_cache(
        {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        tmp_path,
    )

    # When the whole folder is run
    done = cli(
        "run", str(tmp_path / "docs"), "-q", QUESTION, "--model", "scripted/needle",
        "-o", str(out), "--workers", "2", env=env, timeout_s=240,
    )  # fmt: skip

    # Then the four readable documents are answered, each with its own code
    assert done.returncode == 1, done.stderr  # not every document completed
    rows = {r["id"]: r for r in read_jsonl(out)}
    assert sorted(rows) == sorted([*codes, "scan.pdf", "broken.pdf", "blob.bin"])
    for name, code in codes.items():
        assert (rows[name]["status"], rows[name]["answer"]) == ("COMPLETED", code), rows[name]
    # And each unreadable one has a row of its own, FAILED with the reason, never run
    reasons = {n: r["reason"] for n, r in rows.items() if r["status"] == "FAILED"}
    assert reasons == {
        "scan.pdf": "unreadable document: PDF without a text layer (none of its 2 pages has "
        "text: a scanned document? run OCR on it first)",
        "broken.pdf": reasons["broken.pdf"],
        "blob.bin": "unreadable document: binary data, not text",
    }
    assert reasons["broken.pdf"].startswith("unreadable document: corrupt or unreadable PDF (")
    for name in reasons:
        assert rows[name]["iterations"] == 0 and rows[name]["usage"]["calls"] == 0
    # And the command said so, and counted them like any failed job
    assert "unreadable, recorded as FAILED: blob.bin: binary data, not text" in done.stderr
    assert "7 documents, 4 started, 0 already done or running, 3 unreadable" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("4/7 completed, 3 failed (3 FAILED)")
    # And the conversions were cached for the next run (the unreadable files are not)
    assert len(list((tmp_path / "ingest-cache").rglob("*.json"))) == 4


# ---- item 2: a corpus as one context ---------------------------------------------------------


def test_a_corpus_question_is_answered_from_two_documents(stack: Stack, tmp_path: Path) -> None:
    # Given a folder where each half of an answer sits in a different document
    corpus_folder(tmp_path / "corpus")
    env = env_with_cache(stack.env, tmp_path)

    # When the folder is submitted as one job
    done = cli(
        "submit", "--corpus", str(tmp_path / "corpus"), "-q",
        "What are the two halves of the vault code?", "--model", "scripted/corpus", "--wait",
        "--timeout", "120", env=env, timeout_s=150,
    )  # fmt: skip

    # Then the answer holds both halves, each under the document it came from
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["status"] == "COMPLETED"
    assert row["answer"] == (
        "vault-a.pdf: The first half of the vault code is 4417.\n"
        "vault-b.docx: The second half of the vault code is 9032."
    )
    # And the unreadable file was named to the user and to the model, not fatal
    assert "left out of the corpus: blob.bin: binary data, not text" in done.stderr
    trajectory = [
        json.loads(line) for line in cli("trajectory", row["job_id"], env=env).stdout.splitlines()
    ]
    first = trajectory[1]["prompt"][1]["content"]
    assert "It is a corpus of 3 documents from the folder corpus: a dict from file name" in first
    assert "vault-a.pdf (PDF, 2 pages" in first and "vault-b.docx (Word document" in first
    assert "1 file could not be read and is not in it: blob.bin (binary data, not text)" in first


# ---- item 3: structured answers ----------------------------------------------------------------


def test_schema_answers_are_fixed_when_they_can_be_and_fail_when_they_cannot(
    stack: Stack,
    tmp_path: Path,
) -> None:
    # Given two invoices and a schema; the scripted model first answers with strings
    invoices(tmp_path / "invoices")
    schema = tmp_path / "invoice.schema.json"
    schema.write_text(json.dumps(INVOICE_SCHEMA))
    env = env_with_cache(stack.env, tmp_path)
    batch_id = f"docs-{uuid.uuid4().hex[:8]}"

    # When the batch runs with the schema
    submitted = cli(
        "batch", str(tmp_path / "invoices"), "-q", "Fill in the invoice fields.",
        "--schema", str(schema), "--model", "scripted/fields", "--batch-id", batch_id, env=env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    watched = cli("watch", batch_id, "--interval", "1", env=env, timeout_s=150)
    assert watched.returncode == 1, watched.stderr
    rows = {
        r["id"]: r for r in map(json.loads, cli("results", batch_id, env=env).stdout.splitlines())
    }

    # Then the invoice the model could fix completed, its value validated and kept
    usd = rows["usd.txt"]
    assert usd["status"] == "COMPLETED", usd
    assert usd["structured"] == {"invoice_number": "INV-2041", "total_due": 1250, "currency": "USD"}
    assert json.loads(usd["answer"]) == usd["structured"]
    assert usd["iterations"] == 3  # look, answer (rejected: "1250 USD" is a string), fix
    steps = [
        json.loads(line) for line in cli("trajectory", usd["job_id"], env=env).stdout.splitlines()
    ]
    assert "ANSWER SCHEMA (JSON Schema):" in steps[1]["prompt"][1]["content"]
    rejected = steps[3]["prompt"][-1]["content"]
    assert rejected.startswith("Your final answer does not match the answer schema.")
    assert "at $.total_due: '1250 USD' is not of type 'integer'" in rejected

    # And the one it could not fix failed after its retries, with the reason and raw answer
    eur = rows["eur.html"]
    assert eur["status"] == "FAILED" and eur["structured"] is None
    assert eur["reason"] == (
        "the final answer does not match the answer schema after 2 retries: "
        "at $.currency: 'EUR' is not one of ['USD', 'GBP']"
    )
    assert json.loads(eur["answer"]) == {
        "invoice_number": "INV-9",
        "total_due": 80,
        "currency": "EUR",
    }

    # And as CSV the schema's fields are columns
    table = tmp_path / "invoices.csv"
    written = cli("results", batch_id, "-o", str(table), env=env)
    assert written.returncode == 0, written.stderr
    cells = {r["id"]: r for r in csv.DictReader(io.StringIO(table.read_text()))}
    assert list(next(iter(cells.values())))[-3:] == ["invoice_number", "total_due", "currency"]
    assert (cells["usd.txt"]["invoice_number"], cells["usd.txt"]["total_due"]) == (
        "INV-2041",
        "1250",
    )
    assert cells["eur.html"]["status"] == "FAILED" and cells["eur.html"]["total_due"] == ""


# ---- bad input: exit 2, one line -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (
            "broken.pdf",
            ["--context-file", "{dir}/broken.pdf"],
            "broken.pdf: corrupt or unreadable PDF",
        ),
        ("blob.bin", ["--context-file", "{dir}/blob.bin"], "blob.bin: binary data, not text"),
        ("blob.bin", ["--corpus", "{dir}"], "no document in it can be read (blob.bin: binary"),
        ("bad.json", ["--context", "x", "--schema", "{dir}/bad.json"], "not a valid JSON Schema"),
        ("none", ["--context", "x", "--schema", "{dir}/missing.json"], "no such schema file"),
    ],
)
def test_unreadable_single_inputs_and_bad_schemas_exit_2(
    make: str, args: list[str], message: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    files = {
        "broken.pdf": corrupt_pdf(),
        "blob.bin": binary_blob(),
        "bad.json": b'{"type": "objekt"}',
        "none": b"",
    }
    (tmp_path / make).write_bytes(files[make])
    env = env_with_cache(
        {"PATH": os.environ.get("PATH", ""), "RLM_JOBS_REDIS_URL": redis_server.url}, tmp_path
    )
    done = cli("submit", "-q", "q", *[a.format(dir=tmp_path) for a in args], env=env)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""


# ---- the README's examples -----------------------------------------------------------------


def test_the_readme_document_examples_run(stack: Stack, tmp_path: Path) -> None:
    env = env_with_cache(stack.env, tmp_path)
    table = tmp_path / "invoices.csv"
    done = cli(
        "run", "examples/invoices", "--schema", "examples/invoice.schema.json",
        "--model", "scripted/fields", "-q", "Fill in the invoice fields.", "-o", str(table),
        "--interval", "1", env=env, timeout_s=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    cells = list(csv.DictReader(io.StringIO(table.read_text())))
    assert {c["id"]: (c["invoice_number"], c["total_due"], c["currency"]) for c in cells} == {
        "acme.md": ("ACME-2041", "1250", "USD"),
        "cafe-mueller.txt": ("CM-88", "312", "USD"),
        "globex.html": ("GX-0007", "980", "GBP"),
        "umbrella.pdf": ("UC-5150", "4400", "USD"),
    }

    across = cli(
        "run", "examples/invoices", "--corpus", "--model", "scripted/corpus",
        "-q", "What is the total due on each invoice?", "-o", "-", "--interval", "1",
        env=env, timeout_s=150,
    )  # fmt: skip
    assert across.returncode == 0, across.stderr
    [row] = [json.loads(line) for line in across.stdout.splitlines()]
    assert row["id"] == "invoices" and row["status"] == "COMPLETED"
    assert row["answer"].splitlines() == [
        "acme.md: Total due: 1,250.00 USD",
        "cafe-mueller.txt: Total due: 312 USD",
        "globex.html: - Total due: 980 GBP",
        "umbrella.pdf: Total due: 4,400 USD",
    ]
