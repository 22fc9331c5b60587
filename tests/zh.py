"""Scoring Mandarin: Traditional characters where Simplified belongs, and CER of speech against its text."""

from __future__ import annotations

from typing import Any

from services.asr import script
from services.tts import zh_normalize
from services.tts.engines.base import Speech
from shared import audio, textnorm


def traditional_only(text: str) -> list[str]:
    """Characters that Simplified Chinese writes differently (OpenCC t2s would change them)."""
    return [ch for ch in text if script.convert(ch, "t2s") != ch]


def simplified_only(text: str) -> list[str]:
    """Characters that Traditional Chinese (Taiwan) writes differently."""
    return [ch for ch in text if script.convert(ch, "s2tw") != ch]


def spoken(text: str) -> str:
    """A text as it is said, for CER between a reply and its transcript: whisper may write 9点 or 九点, 幺 or 一."""
    return zh_normalize.normalize(text).replace("幺", "一")


def syllables(text: str) -> list[str]:
    """The toneless pinyin syllables of a text as it is said (punctuation dropped)."""
    from pypinyin import lazy_pinyin

    return [s.lower() for s in lazy_pinyin(spoken(text)) if s.isascii() and s.isalpha()]


def syllable_error_rate(reference: str, heard: str) -> float:
    """Errors over the syllables said: what a listener hears. CER also counts which of several homophones
    whisper wrote (达摩 and 大魔 are both "da mo"), which says nothing about the voice."""
    return textnorm.wer(" ".join(syllables(reference)), " ".join(syllables(heard)))


def spoken_cer(reference: str, heard: str) -> float:
    return textnorm.cer(spoken(reference), spoken(heard))


def hear(whisper: Any, speech: Speech) -> str:
    """Whisper base on synthesized speech, as the ASR stage hears Mandarin: 16 kHz, language zh, then t2s."""
    pcm = audio.decode(audio.to_wav(speech.pcm, speech.sample_rate))
    segments, _ = whisper.transcribe(pcm, language="zh", beam_size=5)
    return script.convert("".join(s.text for s in segments).strip(), "t2s")
