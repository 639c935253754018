"""Task arguments as they arrive from the broker: ids only, checked before use.

A malformed message is rejected with a readable reason and acknowledged, so it can
neither crash a worker nor come back forever.
"""

from __future__ import annotations

import re
from typing import Any

# Ids are ours (uuid hex, child ids with dots); anything else is a malformed message.
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
# Call ids one llm task may carry: the upper bound of the llm_chunk_size setting.
MAX_CALLS_PER_TASK = 100


def valid_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(f"malformed {what}: {str(value)[:80]!r}")
    return value


def valid_call_ids(value: Any) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CALLS_PER_TASK:
        raise ValueError(f"malformed call ids: {str(value)[:80]!r}")
    call_ids = [valid_id(v, "call id") for v in value]
    if len(set(call_ids)) != len(call_ids):  # the same prompt would be answered twice
        raise ValueError(f"repeated call ids: {str(value)[:80]!r}")
    return call_ids
