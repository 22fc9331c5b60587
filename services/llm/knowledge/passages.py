"""Sections to passages: whole sentences packed up to a size, never across a heading.

Sentences that read as orders to an assistant ("ignore previous instructions", "reveal other
customers' data", "you are now…") are dropped here and counted on the document: a document is
data, and such a sentence carries no fact a caller could ask about. The prompt also frames passages
as quoted data; this is the second lock on the same door.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.llm.knowledge.extract import Section
from shared.knowledge import Passage
from shared.sentences import is_cjk, size

# A Western sentence ends before whitespace and a capital, digit or quote (so "9 a.m. to 6 p.m." stays
# whole); a CJK one at its mark.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"“‘(\[])|(?<=[。！？；])\s*|(?<=;)\s+")

INSTRUCTION_LIKE = re.compile(
    r"(ignore|disregard|forget|override)\b.{0,40}\b(instruction|prompt|rule|guideline|above|previous|prior)"
    r"|\b(system prompt|developer message|jailbreak)\b"
    r"|\byou are (now|no longer)\b|\bact as\b|\bpretend (to be|you)\b"
    r"|\b(reveal|disclose|leak|share|list|print|output)\b.{0,40}\b(other (customers?|users?|clients?|tenants?)|"
    r"personal data|passwords?|api keys?|credentials|secrets?)"
    r"|\b(message|note|instructions?) (for|to) (the )?(assistant|ai|bot|chatbot|model|agent)\b"
    r"|\b(assistant|ai|chatbot|language model|llm)\b.{0,30}\b(must|should|always|never|shall)\b"
    r"|\b(end|start|begin|finish) (every|each|all|your) (answers?|repl(y|ies)|responses?)\b"
    r"|忽略.{0,10}(指令|指示|提示|规则)|无视.{0,10}(指令|指示|规则)|(透露|泄露|公开).{0,10}(其他|别的)?(客户|用户)"
    r"|系统提示",
    re.IGNORECASE,
)


@dataclass
class Split:
    passages: list[Passage]
    characters: int
    removed_sentences: int


def sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(paragraph) if s and s.strip()]


def split(doc_id: str, sections: list[Section], max_size: int) -> Split:
    passages: list[Passage] = []
    removed = characters = 0

    def close(heading: str, current: list[str]) -> None:
        if current:
            joined = "".join(current) if all(_cjk_end(p) for p in current) else " ".join(current)
            passages.append(Passage(id=f"{doc_id}#{len(passages)}", heading=heading, text=joined))
            current.clear()

    for section in sections:
        current: list[str] = []
        for paragraph in section.paragraphs:
            for sentence in sentences(paragraph):
                if INSTRUCTION_LIKE.search(sentence):
                    removed += 1
                    continue
                characters += len(sentence)
                if current and size(" ".join([*current, sentence])) > max_size:
                    close(section.heading, current)
                current.append(sentence)
            if current and size(" ".join(current)) > max_size // 2:
                close(section.heading, current)  # a long paragraph ends its passage; short ones gather
        close(section.heading, current)
    return Split(passages, characters, removed)


def _cjk_end(part: str) -> bool:
    """CJK sentences join without spaces."""
    return bool(part) and (is_cjk(part[-1]) or part[-1] in "。！？；")
