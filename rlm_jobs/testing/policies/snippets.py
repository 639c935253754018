"""REPL code shared by several policies, as ``string.Template`` text (see ``base.render``).

Raw strings: the ``\\n`` inside them must reach the REPL as an escape, not a line break.
"""

from __future__ import annotations

# Defines chunks_of(data): the context as text chunks of at most $chunk_chars characters,
# cut at line (or item, or key) boundaries so a sentence is rarely split in two.
CHUNKING = r"""
import json

CHUNK_CHARS = $chunk_chars


def as_text(value):
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def pieces_of(data):
    if isinstance(data, str):
        lines = data.splitlines(keepends=True)
    elif isinstance(data, dict):
        lines = [f"{key}: {as_text(value)}\n" for key, value in data.items()]
    else:
        lines = [as_text(item) + "\n" for item in data]
    for line in lines:
        for start in range(0, max(len(line), 1), CHUNK_CHARS):
            yield line[start:start + CHUNK_CHARS]


def chunks_of(data):
    chunks, current, size = [], [], 0
    for piece in pieces_of(data):
        if current and size + len(piece) > CHUNK_CHARS:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(piece)
        size += len(piece)
    if current:
        chunks.append("".join(current))
    return chunks or [""]
"""

# Defines useful(replies): the replies that found something, without repeats or error slots.
USEFUL = r"""
def useful(replies):
    kept = []
    for reply in replies:
        reply = reply.strip()
        if reply and reply != $nothing and not reply.startswith("Error:") and reply not in kept:
            kept.append(reply)
    return kept
"""

INSPECT = r"""
print(f"context is a {type(context).__name__} of length {len(context):,}")
if isinstance(context, str):
    print(context[:300])
elif isinstance(context, dict):
    print("first keys:", list(context)[:10])
else:
    print("first items:", [str(item)[:120] for item in context[:3]])
"""
