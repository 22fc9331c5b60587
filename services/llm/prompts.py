"""The messages sent for one turn: system prompt (with the caller's language), recent history, the user text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.llm.engines.base import Message
from shared import languages

LANGUAGES = {
    "ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "fr": "French", "hi": "Hindi",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese",
    "ru": "Russian", "sv": "Swedish", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese", "zh": "Chinese",
}
ROLES = frozenset({"user", "assistant"})


TRADITIONAL_TAGS = frozenset({"tw", "hk", "mo", "hant"})


def language_name(language: str) -> str:
    """English name for the prompt; Chinese says which characters, as the transcript the model reads does."""
    tags = language.lower().replace("_", "-").split("-")
    if tags[0] == "zh":
        traditional = TRADITIONAL_TAGS.intersection(tags[1:])
        return "Chinese (Traditional characters)" if traditional else "Chinese (Mandarin, Simplified characters)"
    return LANGUAGES.get(tags[0], language)


def system_prompt(base: str, language: str | None) -> str:
    if not language:
        return base
    name = language_name(language)
    return f"{base} The caller speaks {name}: reply in {name}."


def recent_history(history: Sequence[Any] | None, turns: int) -> list[Message]:
    """The last `turns` exchanges, keeping only well-formed user/assistant messages.

    Callers' history cannot carry system messages, so it cannot replace our instructions.
    """
    kept: list[Message] = []
    for item in history or ():
        if isinstance(item, dict) and item.get("role") in ROLES and isinstance(item.get("content"), str):
            kept.append({"role": item["role"], "content": item["content"]})
    return kept[-2 * turns:] if turns > 0 else []


def build(
    text: str, *, system: str, language: str | None = None, history: Sequence[Any] | None = None, turns: int = 10
) -> list[Message]:
    # A typed Chinese question with no language given (no ASR ran to detect one) still gets a Chinese reply.
    language = language or ("zh" if languages.written_in_chinese(text) else None)
    return [
        {"role": "system", "content": system_prompt(system, language)},
        *recent_history(history, turns),
        {"role": "user", "content": text},
    ]
