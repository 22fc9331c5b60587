"""What every TTS engine offers: text in, mono int16 PCM out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np


@dataclass
class Speech:
    pcm: np.ndarray  # int16, mono
    sample_rate: int
    # When each whitespace-separated word of the text ends, in seconds from the start of `pcm`; None when the
    # engine cannot tell. A live call uses them to keep exactly the words a caller heard before cutting in.
    word_ends_s: list[float] | None = None

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.sample_rate if self.sample_rate else 0.0


class TtsEngine(Protocol):
    name: str

    def synthesize(self, text: str, *, voice: str | None, language: str | None, speed: float) -> Speech:
        """`voice` None means the engine's voice for `language`; `speed` 1.0 is the normal rate."""
        ...

    def supports(self, language: str | None) -> bool:
        """Whether the engine has a voice for `language` (an ISO code; None = unknown)."""
        ...

    def voice_for(self, voice: str | None, language: str | None) -> str:
        """The voice `synthesize` would actually use for these arguments."""
        ...


def base_language(language: str | None) -> str | None:
    """`zh-CN`, `zh_TW`, `ZH` → `zh`; None stays None."""
    if not language or not language.strip():
        return None
    return language.strip().lower().replace("_", "-").split("-")[0]


def to_int16(audio: np.ndarray) -> np.ndarray:
    if audio.dtype == np.int16:
        return audio
    return cast(np.ndarray, (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16))
