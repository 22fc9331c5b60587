"""Text normalisation and error rates for scoring transcripts (tests, benchmarks) and for cache keys."""

from __future__ import annotations

import re
import unicodedata

_NUMBERS = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "mister": "mr", "misses": "mrs",
}


def normalize(text: str) -> str:
    """Lower case, no punctuation, number words as digits, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"\[[^\]]*\]", " ", text)  # speaker tags like [L]
    text = re.sub(r"(?<=\d),(?=\d)", "", text)
    text = re.sub(r"[^\w\s']|_", " ", text).replace("'", "")
    words = [_NUMBERS.get(w, w) for w in text.split()]
    # "1 0 0" and "100" should score alike: split every number into digits.
    out: list[str] = []
    for w in words:
        out.extend(list(w) if w.isdigit() else [w])
    return " ".join(out)


def _distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    return _distance(ref, hyp) / max(1, len(ref))


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate ignoring spaces and punctuation (for Mandarin)."""
    ref, hyp = list(normalize(reference).replace(" ", "")), list(normalize(hypothesis).replace(" ", ""))
    return _distance(ref, hyp) / max(1, len(ref))
