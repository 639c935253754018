"""Reading the root model's replies: code blocks and final answers written in prose."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A fence opening with ```repl (optionally ```python repl is not accepted: the contract is
# ```repl) and closing with ``` on its own line.
_BLOCK = re.compile(r"^[ \t]*```repl[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)
# FINAL(...) / FINAL_VAR(...) only count at the start of a line, so prose such as
# "I will call FINAL(...) later" in mid-sentence does not end the job.
_FINAL_VAR = re.compile(r"^[ \t]*FINAL_VAR\((.*?)\)[ \t]*$", re.MULTILINE)
_FINAL = re.compile(r"^[ \t]*FINAL\((.*)\)[ \t]*$", re.MULTILINE | re.DOTALL)


def code_blocks(reply: str) -> list[str]:
    return [m.group(1).rstrip("\n") for m in _BLOCK.finditer(reply)]


def prose(reply: str) -> str:
    """The reply with its code blocks removed."""
    return _BLOCK.sub("", reply)


@dataclass(frozen=True)
class FinalInText:
    text: str | None = None
    var_name: str | None = None


def final_in_text(reply: str) -> FinalInText | None:
    """A FINAL(...) or FINAL_VAR(...) written outside code blocks, if any."""
    outside = prose(reply)
    var = _FINAL_VAR.search(outside)
    if var:
        name = var.group(1).strip().strip("'\"")
        return FinalInText(var_name=name) if name.isidentifier() else None
    final = _FINAL.search(outside)
    if final:
        return FinalInText(text=_unquote(final.group(1).strip()))
    return None


def _unquote(text: str) -> str:
    for quote in ('"""', "'''", '"', "'"):
        if len(text) >= 2 * len(quote) and text.startswith(quote) and text.endswith(quote):
            return text[len(quote) : -len(quote)]
    return text
