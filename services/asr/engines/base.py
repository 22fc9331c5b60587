"""What every ASR engine offers: transcribe 16 kHz mono float32 audio into timed segments."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    low_confidence: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Transcript:
    text: str
    language: str
    language_probability: float
    duration_s: float
    segments: list[Segment] = field(default_factory=list)
    encoder_window_s: float | None = None  # the longest input the encoder saw (30: whisper's own); None: untold


OnSegment = Callable[[Segment], None]


@dataclass(frozen=True)
class Confidence:
    """When a segment needs a human to check it.

    Whisper itself treats a window as silence when its no-speech probability is
    high *and* its log-probability is low; for review, either sign alone is doubt enough.
    """

    min_logprob: float = -1.0
    max_no_speech: float = 0.6

    def is_low(self, avg_logprob: float, no_speech_prob: float) -> bool:
        return avg_logprob < self.min_logprob or no_speech_prob > self.max_no_speech


FRAMES_PER_S = 100  # whisper's log-mel frames: a 10 ms hop


@dataclass(frozen=True)
class EncoderWindow:
    """How much audio whisper's encoder sees at once, for audio known to be short (a live call's piece).

    Whisper pads every window to 30 s, so a three-second phrase costs the encoder as much as 30 s of speech.
    Trimmed, the encoder sees the speech plus `margin_s` of padding, and at least `min_s`. Whisper was trained
    on 30 s windows only: too short a window makes it repeat or drop words (measured with a 1 s margin and no
    floor), so both bounds were chosen on the repository's recordings (`bench/encoder_window.py`).
    """

    min_s: float
    margin_s: float

    def trim(self, features: np.ndarray) -> np.ndarray:
        """Log-mel `features` (..., frames), zero-padded to 30 s, cut to the window."""
        total = features.shape[-1]
        # pad_or_trim pads with exact zeros; a log-mel frame of real audio, silence included, never is all zeros.
        used = np.flatnonzero(np.any(features.reshape(-1, total) != 0, axis=0))
        content = int(used[-1]) + 1 if used.size else 0
        want = max(self.min_s, content / FRAMES_PER_S + self.margin_s)
        return features[..., :min(total, math.ceil(want) * FRAMES_PER_S)]


class AsrEngine(Protocol):
    name: str
    model: str

    @property
    def multilingual(self) -> bool: ...

    @property
    def languages(self) -> frozenset[str]:
        """ISO codes the model can be asked for."""
        ...

    def load(self, threads: int | None = None) -> float:
        """Load the model into this process; returns the seconds it took. `threads` (default: the
        configured number) is 1 in a parent that will fork; job processes then use their own threads."""
        ...

    def detect_language(self, audio: np.ndarray, *, vad: bool) -> tuple[str, float] | None:
        """(language, probability) from the first 30 s of speech; None when there is no speech."""
        ...

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        language: str | None,
        beam_size: int,
        vad: bool,
        hotwords: str | None = None,
        initial_prompt: str | None = None,
        on_segment: OnSegment | None = None,
        batch_size: int = 0,
        window: EncoderWindow | None = None,
    ) -> Transcript:
        """`audio`: float32 numpy array, 16 kHz mono. `on_segment` sees each segment as soon as it is decoded.

        `batch_size` > 0: cut the audio at VAD pauses into windows of up to 30 s and decode that many
        windows at once (throughput for recorded calls); 0: whisper's own sequential, sliding-window
        decode (the first segment soonest, for live turns). An engine without a batched decode may ignore it.
        `window`: trim the encoder's input to it in a sequential decode (None: whisper's own 30 s); an engine
        that cannot may ignore it.
        """
        ...
