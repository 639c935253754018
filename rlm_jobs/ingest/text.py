"""Bytes to text in whatever common encoding they are in; binary data is refused.

Order: a byte-order mark, then strict UTF-8 (what almost every modern file is, and what a
detector can only guess at), then ``chardet``'s detection. chardet 7 was chosen over
charset-normalizer because it decoded every paragraph of our comparison (Latin-1, cp1252,
cp1250, ISO-8859-2, cp1251, KOI8-R, Shift-JIS, EUC-JP prose) correctly, where
charset-normalizer read French Latin-1 as cp1257; it has no dependencies and says when
bytes are binary.

On a line or two any detector is close to guessing (chardet read "Crème brûlée à côté du
café" as Mac Cyrillic), so its candidates are checked: a reading that mixes scripts inside
a word ("Crиme" has a Latin C and a Cyrillic и) is wrong, and among the readings left that
it rates nearly as likely as the best, the most widely used encoding wins: cp1252, then
the other common code pages, then the rare ones. On paragraphs its first choice stands.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
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
# Candidates worth checking, and those that count as "nearly as likely" as the best, as a
# fraction of its confidence.
_PLAUSIBLE = 0.1
_CLOSE = 0.6
# Bytes of a candidate reading that are checked for mixed scripts.
_CHECK_BYTES = 4096
_WORD = re.compile(r"[^\W\d_]+")
# Scripts that share words: Japanese writes kanji, hiragana and katakana in one word.
_SCRIPT_GROUPS = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "HALFWIDTH": "CJK", "FULLWIDTH": "CJK"}
# How common an encoding is in documents people have, most common first; others rank last.
_COMMON = (
    ("cp1252",),
    (
        "cp1250", "cp1251", "iso8859-1", "iso8859-2", "iso8859-5", "iso8859-7", "iso8859-15",
        "koi8-r", "koi8-u", "cp932", "shift_jis", "euc-jp", "gb18030", "gb2312", "big5",
        "euc-kr", "cp949", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258",
    ),
)  # fmt: skip
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


def _rank(encoding: str) -> int:
    return next((i for i, tier in enumerate(_COMMON) if encoding in tier), len(_COMMON))


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    first = name.split(" ", 1)[0]
    return _SCRIPT_GROUPS.get(first, first)


def _mixed_words(data: bytes, encoding: str) -> int:
    """Words of the reading that mix scripts: the mark of the wrong code page."""
    try:
        text = data[:_CHECK_BYTES].decode(encoding, errors="replace")
    except LookupError:
        return _CHECK_BYTES
    return sum(1 for word in _WORD.findall(text) if len({_script(ch) for ch in word}) > 1)


def _detect(data: bytes) -> str | None:
    """chardet's choice, unless a reading it rates nearly as likely is more plausible.

    No "superset" renaming: chardet would report ISO-8859-2 as cp1250, which decodes
    ą, ś and ź as other letters. When nothing fits it answers cp1252 unchecked; the share
    of replaced bytes then tells (see ``decode``).
    """
    found = chardet.detect_all(data, prefer_superset=False, compat_names=False)
    if not found or found[0]["encoding"] is None:
        return None
    top = found[0]["confidence"]
    plausible = [
        (str(c["encoding"]), c["confidence"])
        for c in found
        if c["encoding"] is not None and c["confidence"] >= _PLAUSIBLE * top
    ]
    mixed = {name: _mixed_words(data, name) for name, _ in plausible}
    fewest = min(mixed.values())
    kept = [(name, conf) for name, conf in plausible if mixed[name] == fewest]
    best = max(conf for _, conf in kept)
    close = [name for name, conf in kept if conf >= _CLOSE * best]
    return min(close, key=_rank)  # min is stable: chardet's order breaks ties


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
    encoding = _detect(data)
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
