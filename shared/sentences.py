"""Cutting a streamed reply into speakable chunks as it arrives.

The first chunk goes out at the first sentence end (or at a comma once it is
long enough), so synthesis starts early; later chunks gather whole sentences
until they are long enough to sound natural and keep the synthesizer busy.
A boundary is only decided once the character after it has arrived, so the
chunks are the same however the text is cut into deltas.
"""

from __future__ import annotations

import re

# Western marks end a sentence only before whitespace; CJK marks end it at once.
TERMINALS = frozenset(".!?;…")
CJK_TERMINALS = frozenset("。！？；")
COMMAS = frozenset(",")
CJK_COMMAS = frozenset("，、")
CLOSERS = frozenset("\"'”’)]}」』）》〉")
OPENERS = "\"'“‘([{「『（《〈"
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "mt", "ft", "no", "vs", "etc", "approx", "dept",
    "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "fig", "est", "min", "max", "tel", "ext",
})
DOTTED = re.compile(r"(?:[a-z]\.)+[a-z]")  # e.g, i.e, a.m, p.m, u.s (the last dot is the candidate)


def is_cjk(ch: str) -> bool:
    return "\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" or "\uff00" <= ch <= "\uffef"


def size(text: str) -> int:
    """Length as speaking time: a CJK character is a syllable, about three Latin letters."""
    return len(text) + 2 * sum(1 for ch in text if is_cjk(ch))


def _abbreviation(text: str, dot: int) -> bool:
    """Whether the '.' at `dot` closes an abbreviation or an initial rather than a sentence."""
    start = dot
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    word = text[start:dot].lstrip(OPENERS)
    if len(word) == 1 and word.isupper():
        return True  # an initial: "J. Smith"
    lower = word.lower()
    return lower in ABBREVIATIONS or bool(DOTTED.fullmatch(lower))


def boundary(text: str, *, final: bool, comma_from: int | None) -> int | None:
    """End (exclusive) of the first sentence in `text`, or None when it is not yet decided.

    `comma_from`: a comma also ends the chunk once the text before it has at least this size.
    `final`: the end of the text counts as a boundary.
    """
    n = len(text)
    i = 0
    while i < n:
        ch = text[i]
        if ch == "\n":
            if any(c.isalpha() for c in text[:i]):
                return i + 1
            i += 1
            continue
        comma = ch in COMMAS or ch in CJK_COMMAS
        if not (ch in TERMINALS or ch in CJK_TERMINALS or comma):
            i += 1
            continue
        if comma and (comma_from is None or size(text[:i]) < comma_from):
            i += 1
            continue
        j = i + 1
        while not comma and j < n and (text[j] in TERMINALS or text[j] in CJK_TERMINALS):
            j += 1
        while j < n and text[j] in CLOSERS:
            j += 1
        if j == n and not final:
            return None  # the next character decides ("3." + "5", "Hi." + '"')
        ends = j == n or ch in CJK_TERMINALS or ch in CJK_COMMAS or text[j].isspace() or is_cjk(text[j])
        if ends and ch == "." and j == i + 1 and _abbreviation(text, i):
            ends = False
        if ends and any(c.isalpha() for c in text[:j]):
            return j
        i = j
    return n if final and n else None


def tidy(text: str) -> str:
    return " ".join(text.split())


class SentenceSplitter:
    """Feed text deltas, get chunks ready to speak: `feed(delta)` then, at the end, `flush()`."""

    def __init__(self, first_comma_chars: int = 24, min_chars: int = 60, long_chars: int = 200) -> None:
        self.first_comma_chars = first_comma_chars  # the first chunk may end at a comma past this size
        self.min_chars = min_chars  # later chunks merge sentences up to this size
        self.long_chars = long_chars  # a sentence this long may be cut at a comma
        self._buf = ""
        self._pending = ""
        self._started = False

    def feed(self, delta: str) -> list[str]:
        self._buf += delta
        return self._drain(final=False)

    def flush(self) -> list[str]:
        out = self._drain(final=True)
        if tidy(self._pending):
            out.append(tidy(self._pending))
        self._pending = ""
        return out

    def _drain(self, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            comma_from = self.long_chars if self._started else self.first_comma_chars
            end = boundary(self._buf, final=final, comma_from=comma_from)
            if end is None or end == 0:
                return out
            piece, self._buf = self._buf[:end], self._buf[end:]
            if not tidy(piece):
                continue
            if not self._started:
                self._started = True
                out.append(tidy(piece))
                continue
            self._pending += piece
            if size(tidy(self._pending)) >= self.min_chars:
                out.append(tidy(self._pending))
                self._pending = ""


def split(text: str) -> list[str]:
    """The chunks of a whole text, exactly as a streamed reply of that text would give them."""
    splitter = SentenceSplitter()
    return splitter.feed(text) + splitter.flush()
