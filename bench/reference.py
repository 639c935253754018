"""The reference implementation (PyPI ``rlms``, import name ``rlm``) in its own virtualenv.

``ensure()`` creates ``bench/.ref-venv`` and installs the pinned version with pip the first
time (about two minutes here); later runs reuse it. Jobs run through ``bench/ref_runner.py``
in that environment, pointed at this run's scripted provider.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Any

from bench.workloads import Workload

VERSION = "0.1.3"
VENV = Path(__file__).resolve().parent / ".ref-venv"
RUNNER = Path(__file__).resolve().parent / "ref_runner.py"
INSTALL_TIMEOUT_S = 900
RUN_TIMEOUT_S = 1800


def _python() -> Path:
    return VENV / "bin" / "python"


def _installed() -> bool:
    if not _python().exists():
        return False
    check = subprocess.run(
        [str(_python()), "-c", "from importlib.metadata import version; print(version('rlms'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return check.returncode == 0 and check.stdout.strip() == VERSION


def ensure(*, allow_install: bool) -> tuple[Path | None, str | None]:
    """The reference's Python, or None and why not."""
    if _installed():
        return _python(), None
    if not allow_install:
        return None, (
            f"reference environment {VENV} not built (smoke runs do not install it; "
            "a full run does, once)"
        )
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        install = subprocess.run(
            [str(_python()), "-m", "pip", "install", "-q", f"rlms=={VERSION}"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not create {VENV}: {exc}"
    if install.returncode != 0:
        return None, f"pip install rlms=={VERSION} failed: {install.stderr.strip()[-500:]}"
    return _python(), None


def describe(python: Path | None, problem: str | None) -> dict[str, Any]:
    return {
        "package": f"rlms=={VERSION}",
        "venv": str(VENV),
        "available": python is not None,
        "problem": problem,
    }


def run(
    python: Path,
    base_url: str,
    workloads: list[tuple[Workload, str]],
    workdir: Path,
    *,
    mode: str,
    repeats: int = 1,
    pool_size: int = 1,
) -> dict[str, Any]:
    """Run ``(workload, job name)`` pairs on the reference; returns the runner's JSON."""
    contexts: dict[str, str] = {}
    jobs = []
    for workload, name in workloads:
        path = contexts.get(workload.name)
        if path is None:
            with tempfile.NamedTemporaryFile(
                "w", suffix=".json", dir=workdir, delete=False, encoding="utf-8"
            ) as f:
                json.dump(workload.context, f)
                path = contexts[workload.name] = f.name
        jobs.append(
            {
                "name": name,
                "model": f"ref-{workload.policy}",
                "query": workload.query,
                "context_file": path,
                "max_depth": workload.reference_depth,
            }
        )
    spec = {
        "base_url": base_url,
        "mode": mode,
        "repeats": repeats,
        "pool_size": pool_size,
        "jobs": jobs,
    }
    with tempfile.NamedTemporaryFile(
        "w", suffix=".json", dir=workdir, delete=False, encoding="utf-8"
    ) as f:
        json.dump(spec, f)
    done = subprocess.run(
        [str(python), str(RUNNER), f.name],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=workdir,
        # A clean environment: no provider keys, nothing of ours on the path.
        env={"PATH": "/usr/bin:/bin", "HOME": str(workdir)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"reference runner failed: {done.stderr.strip()[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def main() -> int:
    """``python -m bench.reference``: build the environment now (e.g. before a smoke run)."""
    python, problem = ensure(allow_install=True)
    print(python or problem)
    return 0 if python else 1


if __name__ == "__main__":
    sys.exit(main())
