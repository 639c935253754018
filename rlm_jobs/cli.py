"""``rlm-jobs``: submit, follow and collect RLM jobs from the shell.

Exit codes: 0 success; 1 a job or batch that was waited on did not complete (``submit
--wait``, ``watch``, ``run``); 2 bad usage or input (arguments, files, unknown ids,
unreachable Redis); 130 interrupted. Errors are one line on stderr; a traceback means a bug.

This is an edge of the library: it is where ``Settings()`` is read and where the Celery
side (``workers``) is imported, lazily, only by the commands that start jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NoReturn
from urllib.parse import urlsplit

import redis
from pydantic import TypeAdapter, ValidationError

from rlm_jobs import progress as fmt
from rlm_jobs.batchfiles import (
    documents_from_jsonl_lines,
    load_corpus,
    load_document,
    load_documents,
)
from rlm_jobs.clients import check_model
from rlm_jobs.config import Settings
from rlm_jobs.contexts import ContextValue
from rlm_jobs.errors import ConfigError, RLMJobsError, SpecError, StorageError
from rlm_jobs.ingest import Ingestor
from rlm_jobs.models import JobStatus, Limits, ModelName, validation_problems
from rlm_jobs.resultfiles import ResultFormat, write_csv, write_jsonl
from rlm_jobs.schema import load_schema_file
from rlm_jobs.submitter import BatchHandle, Document, Submitter
from rlm_jobs.trajectory import to_jsonl

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# Often enough for a live bar; Redis sees one pipelined read of the batch per tick.
_POLL_S = 0.5
_MODEL = TypeAdapter(ModelName)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# ---- input checks shared by the commands ----------------------------------------------


def _one_line(exc: ValidationError, what: str) -> str:
    return f"invalid {what}: {validation_problems(exc, what)}"


def _query(text: str | None, *, required: bool = True) -> str | None:
    if text is None and not required:
        return None
    if text is None or not text.strip():
        raise SpecError("the query is empty: pass the question with -q/--query")
    return text


def _model(name: str | None) -> str | None:
    """Fail before anything is written: a malformed name or an unknown provider."""
    return None if name is None else check_model(name)


def _limits(args: argparse.Namespace) -> Limits:
    given = {
        "max_iterations": args.max_iterations,
        "max_depth": args.max_depth,
        "max_cost_usd": args.max_cost_usd,
        "max_tokens": args.max_tokens,
        "max_timeout_s": args.timeout_s,
        "max_subcalls": args.max_subcalls,
        "cache": args.cache,
    }
    try:
        return Limits(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise SpecError(_one_line(exc, "limits")) from None


def _context(args: argparse.Namespace, settings: Settings) -> ContextValue | Document:
    if args.corpus is not None:
        corpus = load_corpus(Path(args.corpus), ingestor=Ingestor.from_settings(settings))
        for name, why in corpus.skipped.items():
            _note(f"left out of the corpus: {name}: {why}")
        return corpus
    if args.context_file is not None:
        return load_document(Path(args.context_file), ingestor=Ingestor.from_settings(settings))
    if args.context == "-":
        return sys.stdin.read()
    text: str = args.context
    return text


def _schema(args: argparse.Namespace) -> dict[str, Any] | None:
    return None if args.schema is None else load_schema_file(Path(args.schema))


def _batch_documents(args: argparse.Namespace, settings: Settings) -> list[Document]:
    """The documents of ``batch``/``run``; each unreadable one is named on stderr."""
    if args.path == "-":
        return _stdin_documents()
    ingestor = Ingestor.from_settings(settings)
    if getattr(args, "corpus", False):
        return [load_corpus(Path(args.path), ingestor=ingestor)]
    docs = load_documents(Path(args.path), ingestor=ingestor)
    for doc in docs:
        if doc.error is not None:
            _note(f"unreadable, recorded as FAILED: {doc.id}: {doc.error}")
    return docs


def _stdin_documents() -> list[Document]:
    """JSONL rows on stdin (``-``)."""
    if sys.stdin is None or sys.stdin.isatty():
        raise SpecError("'-' reads JSONL rows from stdin: pipe them in (... | rlm-jobs batch -)")
    try:
        text = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"stdin is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    # split("\n"), as for files: JSON strings may hold raw U+2028 and other separators.
    return documents_from_jsonl_lines(text.split("\n"), "<stdin>")


def _unreadable_note(docs: list[Document]) -> str:
    count = sum(1 for d in docs if d.error is not None)
    return f", {count} unreadable (recorded as FAILED)" if count else ""


def _redacted(url: str) -> str:
    """A Redis URL for messages: never print its password."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


# ---- connecting -------------------------------------------------------------------------


def _refuse_enqueue(job_id: str) -> None:
    raise ConfigError("this command does not start jobs")


def _celery_enqueuer(settings: Settings) -> Callable[[str], None]:
    # Imported here: Celery is only needed by the commands that start jobs.
    from workers.enqueue import celery_enqueuer

    return celery_enqueuer(settings)


@contextmanager
def _submitter(settings: Settings, *, enqueue: bool = False) -> Iterator[Submitter]:
    if settings.redis_url is None:
        raise ConfigError(
            "no broker configured: set RLM_JOBS_REDIS_URL, or use `rlm-jobs run` "
            "for a private local stack"
        )
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=30, socket_connect_timeout=10)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise ConfigError(f"cannot reach Redis at {_redacted(settings.redis_url)}: {exc}") from None
    try:
        yield Submitter(
            client, _celery_enqueuer(settings) if enqueue else _refuse_enqueue, settings
        )
    finally:
        client.close()


# ---- output -----------------------------------------------------------------------------


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _natural_key(doc_id: str) -> list[tuple[int, int | str]]:
    """``2`` before ``10``: JSONL ids default to line numbers."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", doc_id) if t]


@contextmanager
def _output(path: str) -> Iterator[IO[str]]:
    """stdout for ``-``; otherwise a file that appears whole or not at all."""
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    if not target.parent.is_dir():
        raise SpecError(f"cannot write {path}: directory {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; results are ordinary files
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            yield out
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_results(
    batch: BatchHandle, path: str, out_format: ResultFormat = ResultFormat.JSONL
) -> list[dict[str, Any]]:
    rows = sorted(batch.results(), key=lambda r: _natural_key(str(r["id"])))
    with _output(path) as out:
        if out_format is ResultFormat.CSV:
            write_csv(rows, out, batch.meta().get("answer_schema"))
        else:
            write_jsonl(rows, out)
    return rows


def _follow(batch: BatchHandle, *, interval_s: float, timeout_s: float | None) -> fmt.Snapshot:
    """Show progress until the batch has finished: a live bar on a terminal, lines otherwise.

    Lines (for logs and CI) are printed when the counts change, at most every ``interval_s``.
    """
    tty = sys.stderr.isatty()
    started = time.monotonic()
    first = snap = fmt.Snapshot.of(batch.progress())
    printed: tuple[int, ...] | None = None
    printed_at = 0.0
    while True:
        now = time.monotonic()
        elapsed = now - started
        eta = fmt.eta_s(snap.finished, snap.total, elapsed, finished_at_start=first.finished)
        counts = (snap.finished, snap.completed, snap.running, snap.queued)
        if tty:
            sys.stderr.write("\r" + fmt.render_bar(snap, elapsed, eta, _columns()) + "\x1b[K")
            sys.stderr.write("\n" if snap.done else "")
            sys.stderr.flush()
        elif printed is None or snap.done or (counts != printed and now - printed_at >= interval_s):
            _note(fmt.render_line(snap, elapsed, eta, label=f"batch {batch.id}"))
            printed, printed_at = counts, now
        if snap.done:
            return snap
        if timeout_s is not None and elapsed > timeout_s:
            sys.stderr.write("\n" if tty else "")
            raise TimeoutError(
                f"batch {batch.id}: {snap.finished}/{snap.total} finished after "
                f"{fmt.format_duration(elapsed)}"
            )
        time.sleep(_POLL_S)
        snap = fmt.Snapshot.of(batch.progress())


def _columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except OSError:  # not a terminal
        return 100


def _batch_exit(snap: fmt.Snapshot) -> int:
    return EXIT_OK if snap.completed == snap.total else EXIT_FAILED


# ---- commands ---------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    query = _query(args.query) or ""
    model, sub_model = _model(args.model), _model(args.sub_model)
    limits = _limits(args)
    schema = _schema(args)
    context = _context(args, settings)
    with _submitter(settings, enqueue=True) as submitter:
        job = submitter.submit(
            query, context, model=model, sub_model=sub_model, limits=limits,
            answer_schema=schema, session_id=args.session,
        )  # fmt: skip
        if not args.wait:
            print(job.id)
            return EXIT_OK
        record = job.wait(timeout_s=args.timeout)
        print(json.dumps(record.row(), ensure_ascii=False))
        return EXIT_OK if record.status is JobStatus.COMPLETED else EXIT_FAILED


def _dry_run(args: argparse.Namespace, settings: Settings, docs: Any, **fields: Any) -> int:
    from rlm_jobs.providers.dryrun import report

    caps = {
        "batch_max_cost_usd": args.batch_max_cost_usd,
        "batch_max_tokens": args.batch_max_tokens,
    }
    print("\n".join(report(docs, settings=settings, **caps, **fields)))
    return EXIT_OK


def cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    query = _query(args.query, required=False)
    model, sub_model = _model(args.model), _model(args.sub_model)
    limits = _limits(args)
    schema = _schema(args)
    docs = _batch_documents(args, settings)
    if args.dry_run:
        return _dry_run(
            args, settings, docs, query=query, model=model, sub_model=sub_model, limits=limits
        )
    with _submitter(settings, enqueue=True) as submitter:
        batch, started = submitter.submit_batch(
            docs, query, batch_id=args.batch_id, model=model, sub_model=sub_model, limits=limits,
            answer_schema=schema, batch_max_cost_usd=args.batch_max_cost_usd,
            batch_max_tokens=args.batch_max_tokens,
        )  # fmt: skip
    print(batch.id)
    unreadable = sum(1 for d in docs if d.error is not None)
    _note(
        f"batch {batch.id}: {len(docs)} documents, {started} jobs started, "
        f"{len(docs) - started - unreadable} skipped (completed or still running)"
        f"{_unreadable_note(docs)}"
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    with _submitter(settings) as submitter:
        try:
            job = submitter.job(args.id)
        except StorageError:
            try:
                report: dict[str, Any] = {"kind": "batch", **submitter.batch(args.id).progress()}
            except StorageError:
                raise StorageError(f"no job or batch {args.id!r}") from None
        else:
            record = job.record()
            report = {
                "kind": "job",
                "job_id": job.id,
                "status": record.status.value,
                "reason": record.fields.get("reason", ""),
                "progress": job.progress(),
                "row": record.row(),
            }
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    with _submitter(settings) as submitter:
        batch = submitter.batch(args.batch_id)
        started = time.monotonic()
        snap = _follow(batch, interval_s=args.interval, timeout_s=args.timeout)
    _note(fmt.render_summary(snap, time.monotonic() - started))
    return _batch_exit(snap)


def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    out_format = ResultFormat.for_output(args.format, args.output)
    with _submitter(settings) as submitter:
        rows = _write_results(submitter.batch(args.batch_id), args.output, out_format)
    unfinished = sum(1 for r in rows if not JobStatus(r["status"]).finished)
    completed = sum(1 for r in rows if r["status"] == JobStatus.COMPLETED.value)
    where = "stdout" if args.output == "-" else args.output
    extra = f"; {unfinished} not finished yet" if unfinished else ""
    _note(f"wrote {len(rows)} rows to {where} ({completed} completed{extra})")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    with _submitter(settings) as submitter:
        print(submitter.cancel(args.id))
    return EXIT_OK


def cmd_session(args: argparse.Namespace, settings: Settings) -> int:
    with _submitter(settings) as submitter:
        if args.action == "open":
            print(submitter.open_session(args.session_id).id)
        elif args.action == "show":
            print(json.dumps(submitter.session(args.session_id).info(), indent=2))
        else:
            print(submitter.session(args.session_id).end(args.reason))
    return EXIT_OK


def cmd_trajectory(args: argparse.Namespace, settings: Settings) -> int:
    with _submitter(settings) as submitter:
        entries = submitter.job(args.job_id).trajectory()
    with _output(args.output) as out:
        out.write(to_jsonl(entries))
    if not entries:
        _note(f"job {args.job_id} has no trajectory yet (still queued?)")
    elif args.output != "-":
        _note(f"wrote {len(entries)} entries to {args.output}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    # Everything that can be wrong with the input fails before a process is started.
    query = _query(args.query, required=False)
    model, sub_model = _model(args.model), _model(args.sub_model)
    limits = _limits(args)
    schema = _schema(args)
    out_format = ResultFormat.for_output(args.format, args.output)
    docs = _batch_documents(args, settings)
    if query is None and any(d.query is None for d in docs):
        raise SpecError("the query is empty: pass the question with -q/--query")
    if args.dry_run:
        return _dry_run(
            args, settings, docs, query=query, model=model, sub_model=sub_model, limits=limits
        )
    wall_started = time.monotonic()

    def run_on(effective: Settings, *, local: bool) -> tuple[fmt.Snapshot, list[dict[str, Any]]]:
        with _submitter(effective, enqueue=True) as submitter:
            batch, started = submitter.submit_batch(
                docs, query, batch_id=args.batch_id, model=model, sub_model=sub_model,
                limits=limits, answer_schema=schema, batch_max_cost_usd=args.batch_max_cost_usd,
                batch_max_tokens=args.batch_max_tokens,
            )  # fmt: skip
            unreadable = sum(1 for d in docs if d.error is not None)
            _note(
                f"batch {batch.id}: {len(docs)} documents, {started} started, "
                f"{len(docs) - started - unreadable} already done or running"
                f"{_unreadable_note(docs)}"
            )
            try:
                snap = _follow(batch, interval_s=args.interval, timeout_s=args.timeout)
            except (KeyboardInterrupt, TimeoutError):
                if local:
                    # The stack dies with this command: stop its jobs so the workers can.
                    _note(f"cancelling: {submitter.cancel(batch.id)}")
                else:
                    _note(f"batch {batch.id} keeps running: rlm-jobs watch {batch.id}")
                raise
            return snap, _write_results(batch, args.output, out_format)

    if settings.redis_url is not None:
        _note(f"using the broker at {_redacted(settings.redis_url)}")
        snap, rows = run_on(settings, local=False)
    else:
        from workers.local import LocalStack  # Celery, only now that it is needed

        # The stack starts the scripted provider if either model needs it.
        chosen = settings.model_copy(
            update={
                "model": model or settings.resolved_model(),
                "sub_model": sub_model or settings.sub_model,
            }
        )
        stack = LocalStack(chosen, orchestrators=args.workers)
        _note(f"starting a local stack: {stack.describe()}")
        with stack:
            snap, rows = run_on(stack.settings, local=True)
        if stack.log_path is not None:
            _note(f"worker warnings and errors were logged to {stack.log_path}")
    if args.output != "-":
        for line in fmt.render_preview(rows, _columns()):
            _note(line)
    summary = fmt.render_summary(snap, time.monotonic() - wall_started)
    _note(f"{summary} | results: {'stdout' if args.output == '-' else args.output}")
    return _batch_exit(snap)


# ---- the parser -------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="root model, provider/name (default: from settings)")
    p.add_argument("--sub-model", help="model for llm_query sub-calls (default: the root model)")


def _add_limit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("limits per job (defaults: rlm_jobs.models.Limits)")
    g.add_argument("--max-iterations", type=int, metavar="N")
    g.add_argument("--max-depth", type=int, metavar="N", help="child RLM depth")
    g.add_argument("--max-cost-usd", type=float, metavar="X")
    g.add_argument("--max-tokens", type=int, metavar="N")
    g.add_argument("--timeout-s", type=float, metavar="S", help="wall-clock limit of one job")
    g.add_argument(
        "--max-subcalls", type=int, metavar="N",
        help="llm_query prompts and rlm_query children one job may start (default 1000)",
    )  # fmt: skip
    g.add_argument(
        "--cache", action=argparse.BooleanOptionalAction, default=None,
        help="answer exact repeats from the shared response cache (default: RLM_JOBS_CACHE)",
    )  # fmt: skip


def _add_batch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the whole batch")
    g.add_argument(
        "--batch-max-cost-usd", type=float, metavar="X",
        help="stop starting calls once all the batch's jobs together spent $X",
    )  # fmt: skip
    g.add_argument(
        "--batch-max-tokens", type=int, metavar="N",
        help="stop starting calls once all the batch's jobs together used N tokens",
    )  # fmt: skip
    g.add_argument(
        "--dry-run", action="store_true",
        help="print the documents, their sizes and an estimate of tokens and USD; run nothing",
    )  # fmt: skip


def _add_schema_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--schema", metavar="FILE",
        help="a JSON Schema the final answer must match; rows get its value as 'structured'",
    )  # fmt: skip


def _add_format_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format", choices=[f.value for f in ResultFormat],
        help="jsonl (default), or csv: one column per field of the answer schema "
        "(default: csv for a .csv output file)",
    )  # fmt: skip


def _add_follow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--interval", type=float, default=10.0, metavar="S",
        help="when stderr is not a terminal, print a progress line at most every S seconds",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, metavar="S", help="stop waiting after S seconds")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rlm-jobs",
        description="Run Recursive Language Model jobs on a Celery + Redis cluster, or "
        "locally with `rlm-jobs run`. Configuration comes from RLM_JOBS_* variables.",
        epilog="exit codes: 0 ok, 1 a waited-on job or batch did not complete, "
        "2 bad usage or input, 130 interrupted",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("submit", help="submit one job", description="Submit one job.")
    p.add_argument("-q", "--query", required=True, help="the question to answer")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--context-file", metavar="F",
        help="a document: PDF, DOCX, HTML, Markdown, text (any encoding), CSV/TSV, JSON, JSONL",
    )  # fmt: skip
    src.add_argument("--context", metavar="TEXT", help="the context itself; '-' reads stdin")
    src.add_argument(
        "--corpus", metavar="DIR",
        help="every file of DIR as one context: a dict file name -> content",
    )  # fmt: skip
    _add_schema_args(p)
    _add_model_args(p)
    _add_limit_args(p)
    p.add_argument(
        "--session", metavar="ID",
        help="continue this session (rlm-jobs session open): the REPL keeps the variables "
        "of its earlier questions; one question at a time",
    )  # fmt: skip
    p.add_argument("--wait", action="store_true", help="wait and print the result row as JSON")
    p.add_argument("--timeout", type=float, metavar="S", help="with --wait: give up after S s")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "session",
        help="open, show or end a session (questions over one REPL)",
        description="A session is a sequence of questions (submit --session ID) over one "
        "REPL: a later question can use the variables of the earlier ones. It ends on "
        "`session end` or after RLM_JOBS_SESSION_IDLE_TTL_S without a question.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    opening = actions.add_parser("open", help="open a session and print its id")
    opening.add_argument(
        "session_id", nargs="?", metavar="ID", help="name it (default: a new random id)"
    )
    showing = actions.add_parser("show", help="a session as JSON: status, jobs in order, expiry")
    showing.add_argument("session_id", metavar="ID")
    ending = actions.add_parser("end", help="end a session (its unfinished job is cancelled)")
    ending.add_argument("session_id", metavar="ID")
    ending.add_argument("--reason", default="ended on request", help="recorded with it")
    p.set_defaults(func=cmd_session)

    p = sub.add_parser(
        "batch",
        help="submit one job per document",
        description="Submit one job per document of a directory (one per file, id = file "
        "name; PDF, DOCX, HTML, Markdown, text, CSV/TSV, JSON; an unreadable file is "
        'recorded as FAILED), a JSONL file, or JSONL on stdin ("-"; rows {"id", "context" '
        'or "text", "query"?}). Resubmitting with the same --batch-id skips documents that '
        "completed or are still running.",
    )
    p.add_argument("path", metavar="DIR_OR_JSONL", help="'-' reads JSONL rows from stdin")
    p.add_argument("-q", "--query", help="the question (optional if every row has one)")
    p.add_argument("--batch-id", help="name the batch (default: a new random id)")
    _add_schema_args(p)
    _add_model_args(p)
    _add_limit_args(p)
    _add_batch_args(p)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("status", help="status of a job or batch as JSON")
    p.add_argument("id", metavar="ID", help="a job id or a batch id")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "watch",
        help="follow a batch until it finishes",
        description="Follow a batch until every job has finished, then print a summary. "
        "Exits 0 if every job completed, 1 if any ended otherwise (failed, limit, cancelled).",
    )
    p.add_argument("batch_id", metavar="BATCH")
    _add_follow_args(p)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("results", help="write a batch's result rows as JSONL or CSV")
    p.add_argument("batch_id", metavar="BATCH")
    p.add_argument("-o", "--output", default="-", help="output file; '-' is stdout (default)")
    _add_format_arg(p)
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("cancel", help="cancel a job or every unfinished job of a batch")
    p.add_argument("id", metavar="ID")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("trajectory", help="export a job's trajectory (reference logger JSONL)")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("-o", "--output", default="-", help="output file; '-' is stdout (default)")
    p.set_defaults(func=cmd_trajectory)

    p = sub.add_parser(
        "run",
        help="run a batch to the end and write its results",
        description="Submit a batch, show its progress, write its results. Without "
        "RLM_JOBS_REDIS_URL a private stack (redis-server, workers in this process, and the "
        "offline scripted provider when no API key is set) is started and torn down. "
        "Exits 1 if any job did not complete.",
    )
    p.add_argument(
        "path", metavar="DOCS", help="a directory or a JSONL file; '-' reads JSONL from stdin"
    )
    p.add_argument("-q", "--query", help="the question (optional if every row has one)")
    p.add_argument("-o", "--output", default="results.jsonl", help="default: results.jsonl")
    _add_format_arg(p)
    p.add_argument(
        "--corpus", action="store_true",
        help="the directory is one job: a dict file name -> content, for questions across files",
    )  # fmt: skip
    _add_schema_args(p)
    p.add_argument(
        "--workers", type=int, default=4, metavar="N",
        help="local stack only: jobs run at once (default 4)",
    )  # fmt: skip
    p.add_argument("--batch-id", help="name the batch (default: a new random id)")
    _add_model_args(p)
    _add_limit_args(p)
    _add_batch_args(p)
    _add_follow_args(p)
    p.set_defaults(func=cmd_run)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, so `run` tears its local stack down instead of orphaning it.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    command: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return command(args, Settings())
    except ValidationError as exc:  # Settings from the environment, or a model at the edge
        _note(f"rlm-jobs {args.command}: error: {_one_line(exc, 'settings')}")
    except (RLMJobsError, TimeoutError) as exc:
        _note(f"rlm-jobs {args.command}: error: {exc}")
        return EXIT_FAILED if isinstance(exc, TimeoutError) else EXIT_USAGE
    except redis.RedisError as exc:
        _note(f"rlm-jobs {args.command}: error: Redis: {exc}")
    except OSError as exc:
        _note(f"rlm-jobs {args.command}: error: {exc.strerror or exc}: {exc.filename or ''}")
    except KeyboardInterrupt:
        _note(f"rlm-jobs {args.command}: interrupted")
        return EXIT_INTERRUPTED
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
