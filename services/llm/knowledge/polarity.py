"""A "yes" the passages deny.

The 1.5B model answers most English yes/no questions "Yes, …" whatever the passage says: asked "Does the
warranty cover a cracked screen?" with "The warranty does not cover water damage or a cracked screen." in its
prompt, it said "Yes, the warranty covers a cracked screen." three times in four. The figure guard cannot see
that (no number), and a made-up policy is what a support line must never say. So, for a yes/no question whose
best-matching passage sentence is a negative one, a reply that opens with "yes" is stopped before its first
clause is spoken, and the caller hears that sentence, the document's own words, instead. A real "yes" to a
question such a sentence answers ("Is there a fee if I don't pay on time?") then comes out as the sentence
itself: wordier, still true.

English only: Chinese questions and answers carry their polarity in other ways (可以吗 / 不支持), and the
model has answered the fixture's Chinese ones correctly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from services.llm.knowledge import lexical
from services.llm.knowledge.passages import sentences

YES_NO_QUESTION = re.compile(
    r"^\W*(do|does|did|is|are|was|were|can|could|will|would|should|shall|may|might|have|has|am)\b", re.IGNORECASE)
NEGATIVE = re.compile(r"\b(not|no|never|cannot|none|nor)\b|n't\b", re.IGNORECASE)
YES = re.compile(r"^\W*(yes|yeah|yep|sure|certainly|absolutely|of course|indeed)\b", re.IGNORECASE)


def denial(question: str, texts: Iterable[str]) -> str | None:
    """The negative sentence of `texts` that best matches a yes/no `question` (most of its words), if the best
    match is negative; None for other questions, or when the best match says nothing negative."""
    if lexical.CJK.search(question) or not YES_NO_QUESTION.match(question):
        return None
    asked = set(lexical.terms(question))
    best, best_shared = None, 0
    for text in texts:
        for sentence in sentences(text):
            shared = len(asked & set(lexical.terms(sentence)))
            if shared > best_shared:  # ties keep the earlier one: passages come best first
                best, best_shared = sentence, shared
    return best if best is not None and NEGATIVE.search(best) else None


def says_yes(reply_start: str) -> bool:
    return bool(YES.match(reply_start))
