"""Silero VAD as faster-whisper bundles it (onnxruntime, offline): keep only the speech."""

from __future__ import annotations

import numpy as np
from faster_whisper.vad import SpeechTimestampsMap, VadOptions, collect_chunks, get_speech_timestamps

SAMPLE_RATE = 16000


def speech_only(audio: np.ndarray) -> tuple[np.ndarray, SpeechTimestampsMap | None]:
    """The speech parts joined (empty if there are none), and the map back to the original timeline."""
    chunks = get_speech_timestamps(audio, VadOptions())
    if not chunks:
        return np.zeros(0, dtype=np.float32), None
    pieces, _ = collect_chunks(audio, chunks)
    return np.concatenate(pieces), SpeechTimestampsMap(chunks, SAMPLE_RATE)
