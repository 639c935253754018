"""Every Lua script we ship is there, in full, and says what it does."""

from __future__ import annotations

from importlib import resources

import pytest

from rlm_jobs.scripts import source

NAMES = sorted(
    p.name.removesuffix(".lua")
    for p in resources.files("rlm_jobs.scripts").iterdir()
    if p.name.endswith(".lua")
)


def test_the_scripts_are_found() -> None:
    assert {"job_finish", "job_start", "renew", "call_take", "call_complete"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_script_has_a_header_and_code_that_returns(name: str) -> None:
    lines = source(name).splitlines()
    code = [line for line in lines if line.strip() and not line.lstrip().startswith("--")]
    assert lines[0].startswith("-- "), "a script starts with what it does"
    assert code and any("return" in line for line in code), "a script without its code"
