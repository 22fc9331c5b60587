"""The diarisation seam: who spoke each segment of a mono recording.

A two-channel call is labelled by its channels (services/asr/channels.py); a mono recording has one
signal, so telling its talkers apart takes a diarisation engine. An engine gets the audio the
segments were transcribed from and the transcript's segments, and answers one speaker label per
segment. The stage runs it after transcription, on mono recordings only.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Diarizer(Protocol):
    name: str

    def assign(self, audio: np.ndarray, segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`audio`: 16 kHz mono float32; `segments`: the result's segments (`start`, `end` in seconds,
        `text`, ...). Returns the same segments, in the same order, each with `speaker` set (a name,
        or None for unknown). Must not change anything but `speaker`."""
        ...
