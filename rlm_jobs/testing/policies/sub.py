"""SUB mode: answering one sub-call prompt from the prompt alone.

Every scripted model answers every prompt shape our root policies send, so a job may use
any ``scripted/<policy>`` as its sub-model. The answers are simple, deterministic text
processing (sentence overlap, a regex, keyword counts): enough to make a job's result a
real function of its data.
"""

from __future__ import annotations

import re

# The prompt shapes root policies write into their REPL code (they embed these constants
# with repr(), so both sides always agree).
QUESTION_PREFIX = "Question: "
TEXT_MARK = "\n\nText:\n"
COMBINE_ASK = "Combine these findings into one answer:"
NEEDLE_ASK = "Find the secret code in this text. Reply with the code only, or NONE."
LABEL_ASK = (
    "Label each review below as positive or negative. Reply with one label per line, "
    "in the same order."
)
# Followed by "\nField: <name>\nMeaning: <description>" and TEXT_MARK + the text.
FIELD_ASK = "Find the value of this field in the text. Reply with the value only, or NONE."
NOTHING = "NONE"

_PART = re.compile(r"\AQuestion: (?P<q>.*?)\n\nPart \d+ of \d+:\n(?P<text>.*)\Z", re.DOTALL)
_TEXT = re.compile(r"\AQuestion: (?P<q>.*?)\n\nText:\n(?P<text>.*)\Z", re.DOTALL)
_COMBINE = re.compile(
    r"\AQuestion: (?P<q>.*?)\n\n" + re.escape(COMBINE_ASK) + r"\n(?P<text>.*)\Z", re.DOTALL
)
_FIELD = re.compile(
    re.escape(FIELD_ASK)
    + r"\nField: (?P<name>[^\n]*)\nMeaning: (?P<meaning>[^\n]*)"
    + re.escape(TEXT_MARK)
    + r"(?P<text>.*)\Z",
    re.DOTALL,
)
# "Label: value" lines, the way forms, invoices and reports state their facts.
_LABELLED = re.compile(r"^\s*(?:[-*]\s*)?(?P<label>[^:\n]{1,60}):\s*(?P<value>\S[^\n]*?)\s*$", re.M)
_SECRET = re.compile(r"The secret code is ([A-Za-z0-9_-]+)\.")
_NUMBERED = re.compile(r"^\s*\d+\.\s*(.*)$", re.MULTILINE)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[a-z0-9]+")


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_STOPWORDS = _word_set(
    "a an and any are as at be by can did do does for from had has have how in into is it "
    "its me of on or our say says that the their there this to was were what when where "
    "which who why will with you your"
)
POSITIVE_WORDS = _word_set(
    "amazing best enjoyed excellent fantastic good great happy love loved lovely perfect "
    "recommend wonderful"
)
NEGATIVE_WORDS = _word_set(
    "awful bad boring broken disappointing hate hated horrible poor refund terrible waste worst"
)


def answer_sub(prompt: str) -> str:
    field = _FIELD.match(prompt)
    if field:
        return field_value(f"{field.group('name')} {field.group('meaning')}", field.group("text"))
    if prompt.startswith(NEEDLE_ASK):
        return find_secret(prompt[len(NEEDLE_ASK) :])
    if prompt.startswith(LABEL_ASK):
        return "\n".join(label_reviews(prompt[len(LABEL_ASK) :]))
    combine = _COMBINE.match(prompt)
    if combine:
        return combine_findings(combine.group("text"))
    part = _PART.match(prompt) or _TEXT.match(prompt)
    if part:
        return extract(part.group("q"), part.group("text"))
    question, _, text = prompt.partition("\n\n")
    return extract(question, text or prompt)


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOPWORDS}


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_BREAK.split(text) if s.strip()]


def extract(question: str, text: str, most: int = 3) -> str:
    """The sentences sharing the most content words with the question, or NONE.

    A sentence must share at least half the question's content words (at most three),
    so a chunk that merely mentions one common word does not count as relevant.
    """
    wanted = content_words(question)
    if not wanted:
        return NOTHING
    needed = max(1, min(3, (len(wanted) + 1) // 2))
    scored = [(len(wanted & content_words(s)), s) for s in sentences(text)]
    best = max((score for score, _ in scored), default=0)
    if best < needed:
        return NOTHING
    top: list[str] = []
    for score, sentence in scored:
        if score == best and sentence not in top:
            top.append(sentence)
    return "\n".join(top[:most])


def combine_findings(listing: str) -> str:
    """The distinct findings of a ``- finding`` list, joined one per line."""
    seen: list[str] = []
    for line in listing.splitlines():
        finding = line.strip().removeprefix("- ").strip()
        if finding and finding != NOTHING and finding not in seen:
            seen.append(finding)
    return "\n".join(seen) if seen else NOTHING


def field_value(wanted: str, text: str) -> str:
    """The value of the "Label: value" line whose label best matches ``wanted``, or NONE.

    ``wanted`` is a field name (``total_due``) and its meaning; a label must share at least
    one content word with them, and the first of the best-scoring lines wins.
    """
    words = content_words(wanted.replace("_", " "))
    best, found = 0, NOTHING
    for match in _LABELLED.finditer(text):
        score = len(words & content_words(match.group("label")))
        if score > best:
            best, found = score, match.group("value").rstrip(".").strip()
    return found


def find_secret(text: str) -> str:
    match = _SECRET.search(text)
    return match.group(1) if match else NOTHING


def label_reviews(numbered: str) -> list[str]:
    return [classify(review) for review in _NUMBERED.findall(numbered)]


def classify(review: str) -> str:
    words = _WORD.findall(review.lower())
    positive = sum(w in POSITIVE_WORDS for w in words)
    negative = sum(w in NEGATIVE_WORDS for w in words)
    return "positive" if positive > negative else "negative"
