"""The default: no diarisation. Every segment of a mono recording gets the same speaker label."""

from __future__ import annotations

from typing import Any

import numpy as np


class SingleSpeaker:
    """One talker, or talkers nobody told apart.

    The label defaults to None (no speaker): the call analysis then asks the model to tell the talkers
    apart from what they say (llm_analysis_mono_speakers), and subtitles carry no name prefix.
    """

    name = "none"

    def __init__(self, label: str | None = None) -> None:
        self.label = label

    def assign(self, audio: np.ndarray, segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**s, "speaker": self.label} for s in segments]
