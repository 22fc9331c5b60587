"""TTS test fixtures: the local engines loaded once, whisper for round trips, metric readings."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.tts import synth
from services.tts.config import TtsSettings
from services.tts.engines.base import Speech
from shared import audio, models


def make_settings(**overrides: Any) -> TtsSettings:
    """Short retry waits so retry tests take fractions of a second."""
    values: dict[str, Any] = {"retry_max_attempts": 3, "retry_backoff_s": 0.02, "retry_backoff_max_s": 0.5,
                              "retry_total_s": 5.0, "tts_edge_timeout_s": 5.0, **overrides}
    return TtsSettings(**values)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def transcribe(model: Any, speech: Speech, language: str) -> str:
    pcm = audio.decode(audio.to_wav(speech.pcm, speech.sample_rate))  # 16 kHz, as the ASR stage sees it
    segments, _ = model.transcribe(pcm, language=language, beam_size=5)
    return "".join(s.text for s in segments).strip()


@pytest.fixture(scope="session")
def local_engines() -> synth.Engines:
    engines, _ = synth.load(make_settings(), ("piper", "espeak"))
    return engines


@pytest.fixture(scope="session")
def whisper_tiny() -> Any:
    from faster_whisper import WhisperModel

    return WhisperModel(str(models.whisper_tiny_en()), device="cpu", compute_type="int8")
