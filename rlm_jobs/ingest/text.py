"""Bytes to text in whatever common encoding they are in; binary data is refused.

Order: a byte-order mark, then strict UTF-8 (what almost every modern file is, and what a
detector can only guess at), then ``chardet``'s detection. chardet 7 was chosen over
charset-normalizer because it decoded every sample of our comparison (Latin-1, cp1252,
cp1250, ISO-8859-2, cp1251, KOI8-R, Shift-JIS, EUC-JP prose) correctly, where
charset-normalizer read French Latin-1 as cp1257; it has no dependencies and says when
bytes are binary.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

import chardet

from rlm_jobs.errors import DocumentError

# Longest BOMs first: the UTF-32-LE mark starts with the UTF-16-LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Control characters that never occur in text (tab, newlines, form feed and ESC do).
_CONTROL = frozenset(chr(c) for c in range(32)) - set("\t\n\r\f\v\x1b")
# Share of control characters (or of undecodable bytes) past which "text" is really binary
# data, or in no encoding we know; a stray one in a long text is tolerated.
_MAX_BAD_SHARE = 0.01


@dataclass(frozen=True)
class Decoded:
    text: str
    encoding: str
    replaced: int = 0  # undecodable bytes replaced by U+FFFD (past chardet's sample)


def decode(data: bytes, source: str) -> Decoded:
    """The text in ``data``, newlines normalised to ``\\n``; DocumentError if it is not text."""
    decoded = _decode(data, source)
    text = decoded.text.replace("\r\n", "\n").replace("\r", "\n")
    sample = text[:100_000]
    if sample and sum(ch in _CONTROL for ch in sample) / len(sample) > _MAX_BAD_SHARE:
        raise DocumentError(source, "binary data, not text")
    if decoded.replaced > _MAX_BAD_SHARE * max(len(text), 1):
        raise DocumentError(source, "not text in any common encoding (or binary data)")
    return Decoded(text, decoded.encoding, decoded.replaced)


def _decode(data: bytes, source: str) -> Decoded:
    for bom, marked in _BOMS:
        if data.startswith(bom):
            try:
                return Decoded(data.decode(marked), marked.removesuffix("-sig"))
            except UnicodeDecodeError as exc:
                raise DocumentError(source, f"invalid {marked} text: {exc.reason}") from None
    try:
        return Decoded(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        pass
    # When nothing fits chardet answers cp1252 unchecked: the replaced-bytes share catches it.
    encoding = chardet.detect(data, prefer_superset=True, compat_names=False)["encoding"]
    if encoding is None:  # chardet's verdict for binary data
        raise DocumentError(source, "binary data, not text")
    try:
        return Decoded(data.decode(encoding), encoding)
    except UnicodeDecodeError:
        # chardet reads a sample; stray bytes past it are replaced rather than fatal.
        text = data.decode(encoding, errors="replace")
        return Decoded(text, encoding, text.count("\ufffd"))
    except LookupError:  # a name Python has no codec for: never seen, but not a crash
        raise DocumentError(source, f"unsupported text encoding {encoding}") from None
