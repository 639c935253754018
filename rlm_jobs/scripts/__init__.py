"""Lua scripts run by Redis, one ``.lua`` file each, read once when their user registers them."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def source(name: str) -> str:
    """The text of ``<name>.lua`` in this package."""
    return resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
