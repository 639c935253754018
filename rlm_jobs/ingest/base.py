"""What a converter returns, and the shape every converter has."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rlm_jobs.contexts import ContextValue
from rlm_jobs.ingest.formats import Format


@dataclass(frozen=True)
class Converted:
    """A file's content as a context, with what the model should know about its shape."""

    # str for documents; a list (CSV rows, JSON lines) or the JSON value for structured files.
    context: ContextValue
    format: Format
    # Facts about this content, independent of the file's name: "3 pages", "120 rows with
    # the columns date, amount", "cp1252 text". They are cached with the content.
    detail: str = ""


# (file bytes, file name for messages) -> content; raises DocumentError when it cannot.
Converter = Callable[[bytes, str], Converted]
