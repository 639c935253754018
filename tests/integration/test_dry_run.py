"""``rlm-jobs batch --dry-run`` as users run it: a subprocess with no Redis anywhere."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlm_jobs import prompts
from rlm_jobs.models import ContextRef

pytestmark = pytest.mark.timeout(60)

_SCRIPT = Path(sys.executable).with_name("rlm-jobs")
QUERY = "Who signed it?"  # 14 characters: 4 tokens


def base(chars: int) -> int:
    ref = ContextRef(sha256="0" * 64, kind="str", length=chars, total_chars=chars)
    return math.ceil(len(prompts.system_prompt(ref)) / 4) + math.ceil(
        len(prompts.first_user_message(QUERY, ref)) / 4
    )


def test_the_dry_run_prints_sizes_and_an_estimate_and_needs_no_redis(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("w" * 45_000)
    (docs / "b.txt").write_text("v" * 400)
    env = {"PATH": os.environ.get("PATH", "")}  # no broker, no Redis, no provider key
    args = ["batch", str(docs), "-q", QUERY, "--dry-run", "--model", "scripted/generic"]
    args += ["--max-iterations", "3", "--batch-max-cost-usd", "0.05"]
    done = subprocess.run(
        [str(_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line}
    # By hand, three root turns (max_iterations 3): 3 * base + (0 + 1 + 2) * 1,000 in,
    # 1,500 out; sub-calls: 3 chunks of 20,000 characters, 11,250 tokens of text plus the
    # 4-token query per chunk in, 100 out per chunk.
    a = 3 * base(45_000) + 3_000 + 1_500 + 11_250 + 3 * 4 + 300
    b = 3 * base(400) + 3_000 + 1_500 + 100 + 4 + 100
    cost_a = (3 * base(45_000) + 3_000 + 11_262) * 1e-6 + (1_500 + 300) * 2e-6
    cost_b = (3 * base(400) + 3_000 + 104) * 1e-6 + (1_500 + 100) * 2e-6
    assert rows["a.txt"] == ["45,000", f"{a:,}", f"${cost_a:.4f}"]
    assert rows["b.txt"] == ["400", f"{b:,}", f"${cost_b:.4f}"]
    assert rows["total"] == ["45,400", f"{a + b:,}", f"${cost_a + cost_b:.4f}"]
    assert "nothing was submitted" in done.stdout
    assert "takes 3 root turns" in done.stdout
    assert "within the batch budget of $0.0500" in done.stdout
