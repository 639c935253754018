"""``python -m bench [--smoke] [--only 1,3]``: run the scenarios, write bench/results/.

Exit status is non-zero only when the bench itself crashed (a scenario raised, or the stack
could not start); a missed target is a result, reported as such.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import machine, reference, report
from bench.cluster import Cluster
from bench.scenarios import (
    RunContext,
    Scenario,
    s1_subcall,
    s2_fanout,
    s3_overhead,
    s4_makespan,
    s5_scaling,
    s6_memory,
    s7_concurrency,
    s8_ratelimit,
    s9_faults,
)

log = logging.getLogger("bench")

RESULTS = Path(__file__).resolve().parent / "results"

SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "1": ("subcall_overhead", s1_subcall.run),
    "2": ("fan_out", s2_fanout.run),
    "3": ("per_job_overhead", s3_overhead.run),
    "4": ("batch_makespan", s4_makespan.run),
    "5": ("scaling", s5_scaling.run),
    "6": ("memory", s6_memory.run),
    "7": ("concurrency", s7_concurrency.run),
    "8": ("rate_limited_batch", s8_ratelimit.run),
    "9": ("faults", s9_faults.run),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI (~1 minute)")
    parser.add_argument(
        "--only", default="", help="comma-separated scenario numbers (default: all)"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="results directory (default: bench/results)"
    )
    parser.add_argument(
        "--name",
        default=None,
        help="results file stem (default: latest, or smoke with --smoke)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="do not set up or run the reference implementation",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep worker logs on success")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    log.setLevel(logging.INFO)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="rlm-bench-"))
    out: dict[str, Any] = {
        "smoke": args.smoke,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine.describe(),
        "scenarios": {},
    }
    crashed = False
    ref_python: Path | None = None
    ref_problem: str | None = "disabled with --no-reference"
    if not args.no_reference and ("3" in chosen or "4" in chosen):
        ref_python, ref_problem = reference.ensure(allow_install=not args.smoke)
        out["reference"] = reference.describe(ref_python, ref_problem)
    try:
        with Cluster(workdir) as cluster:
            ctx = RunContext(cluster, args.smoke, workdir, ref_python, ref_problem)
            for number in chosen:
                key, scenario = SCENARIOS[number]
                log.info("scenario %s: %s", number, key)
                t0 = time.monotonic()
                try:
                    data = scenario(ctx)
                except Exception:
                    crashed = True
                    log.exception("scenario %s crashed", number)
                    data = {"crashed": traceback.format_exc()}
                data["duration_s"] = round(time.monotonic() - t0, 1)
                out["scenarios"][f"{number}_{key}"] = data
    except Exception:
        crashed = True
        log.exception("the bench stack failed")
        out["crashed"] = traceback.format_exc()
    out["duration_s"] = round(time.monotonic() - started, 1)
    out["machine"]["load_average_at_end"] = machine.load_average()
    stem = args.name or ("smoke" if args.smoke else "latest")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    report.write(out, args.out, stem)
    log.info("results: %s (%.0f s)", args.out / f"{stem}.md", out["duration_s"])
    if crashed or args.keep_logs:
        log.info("worker logs kept in %s", workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
