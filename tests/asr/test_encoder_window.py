"""A live call's pieces are decoded with a trimmed encoder window; files and turns keep whisper's own 30 s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis
from faster_whisper.audio import pad_or_trim
from faster_whisper.feature_extractor import FeatureExtractor

from services.asr.config import AsrSettings
from services.asr.engines.base import EncoderWindow
from shared import audio, textnorm
from tests.asr.conftest import transcribe

SHORT = "en_short/librispeech-61-70968-0000.flac"  # 4.9 s
JFK = "en_short/jfk.flac"  # 11 s
LONG = "en_short/acoustic_corpus.wav"  # 26.7 s


def features(path: Path) -> np.ndarray:
    """What faster-whisper hands its encoder for this clip: log-mel frames, zero-padded to 30 s."""
    return pad_or_trim(FeatureExtractor()(audio.decode(path.read_bytes())))


@pytest.mark.parametrize(("clip", "window", "seconds"), [
    (SHORT, EncoderWindow(15, 5), 15),  # the floor
    (JFK, EncoderWindow(15, 5), 17),  # 11.0 s of audio + 5 s, rounded up to whole seconds
    (JFK, EncoderWindow(5, 2), 14),
    (LONG, EncoderWindow(15, 5), 30),  # never past whisper's own window
])
def test_trim_keeps_the_speech_and_the_margin(speech: Path, clip: str, window: EncoderWindow, seconds: int) -> None:
    padded = features(speech / clip)
    assert padded.shape == (80, 3000)
    trimmed = window.trim(padded)
    assert trimmed.shape == (80, seconds * 100)
    used = min(padded.shape[-1], int(np.flatnonzero(np.any(padded != 0, axis=0))[-1]) + 1)
    assert np.array_equal(trimmed[:, :min(used, trimmed.shape[-1])], padded[:, :min(used, trimmed.shape[-1])])
    assert window.trim(padded[np.newaxis]).shape == (1, 80, seconds * 100)  # a batch of one, as encode gets it


def test_silence_alone_gets_the_floor() -> None:
    assert EncoderWindow(10, 5).trim(np.zeros((80, 3000), dtype=np.float32)).shape == (80, 1000)


def test_a_call_piece_is_decoded_in_a_trimmed_window(conn: redis.Redis, asr_settings: AsrSettings, speech: Path,
                                                     references: dict[str, dict[str, str]]) -> None:
    piece = transcribe(conn, asr_settings, speech / SHORT, language="en", call_id="call-1")
    assert piece["status"] == "done", piece["error"]
    result = piece["results"]["asr"]
    assert result["encoder_window_s"] == asr_settings.asr_call_encoder_window_s == 15
    assert textnorm.wer(references[SHORT]["transcript"], result["text"]) <= 0.10
    # A file (no call) is decoded exactly as whisper does: the full 30 s window.
    whole = transcribe(conn, asr_settings, speech / SHORT, language="en")["results"]["asr"]
    assert whole["encoder_window_s"] == 30
    assert textnorm.wer(references[SHORT]["transcript"], whole["text"]) <= 0.10


def test_the_trim_can_be_turned_off(conn: redis.Redis, redis_url: str, speech: Path) -> None:
    settings = AsrSettings(redis_url=redis_url, asr_call_encoder_window_s=30)
    result = transcribe(conn, settings, speech / SHORT, language="en", call_id="call-2")["results"]["asr"]
    assert result["encoder_window_s"] == 30
    assert "wizard" in result["text"].lower()
