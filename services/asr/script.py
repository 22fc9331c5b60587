"""Which Chinese script a transcript is written in, and converting it (OpenCC).

Whisper base writes Mandarin in a mix of Traditional and Simplified characters
even when told `language="zh"` (`廣州市` for 广州市), and no initial prompt fixes
that reliably. So every Mandarin transcript goes through OpenCC: `zh` and
`zh-CN` (and a detected Mandarin, unless `asr_zh_script` says otherwise) end in
Simplified, `zh-TW` / `zh-HK` in Traditional with their regional forms.
OpenCC converts Han characters only, so punctuation, digits and Latin words
stay as they are.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from opencc import OpenCC

from services.asr.engines.base import Transcript

Script = Literal["simplified", "traditional", "as-is"]

# Region or script subtag → OpenCC configuration that writes in it.
_TRADITIONAL = {"tw": "s2tw", "hk": "s2hk", "mo": "s2hk", "hant": "s2t"}
_SIMPLIFIED = {"cn": "t2s", "sg": "t2s", "my": "t2s", "hans": "t2s"}


def conversion(requested: str | None, heard: str | None, default: Script = "simplified") -> str | None:
    """The OpenCC configuration for a transcript, or None to leave it alone.

    `requested`: the language the job asked for as given (`zh-TW`, `zh`, None);
    `heard`: the language whisper used or detected (`zh`, `en`, …).
    """
    tags = (requested or "").strip().lower().replace("_", "-").split("-")
    asked_chinese = tags[0] in ("zh", "cmn", "zho", "chi")
    if not asked_chinese and (heard or "").lower() != "zh":
        return None
    for tag in tags[1:]:
        if tag in _TRADITIONAL:
            return _TRADITIONAL[tag]
        if tag in _SIMPLIFIED:
            return _SIMPLIFIED[tag]
    return {"simplified": "t2s", "traditional": "s2t", "as-is": None}[default]


@cache
def _converter(config: str) -> OpenCC:
    return OpenCC(config)


def convert(text: str, config: str | None) -> str:
    return _converter(config).convert(text) if config and text else text


def apply(transcript: Transcript, config: str | None) -> Transcript:
    """Convert a transcript in place: its text and every segment's."""
    if config:
        transcript.text = convert(transcript.text, config)
        for segment in transcript.segments:
            segment.text = convert(segment.text, config)
    return transcript
