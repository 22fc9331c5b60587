"""The diarisation seam for mono recordings: the default single-speaker engine, engine choice by name,
an unknown name refused at start, and two-channel calls left to their channel names."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest
import redis

from services.asr import channels, diarization
from services.asr.config import DIARIZATION_ENGINES, AsrSettings
from shared import audio, textnorm
from shared.jobs import Options
from tests.asr.conftest import transcribe
from tests.stack import VENV_BIN

JFK = "en_short/jfk.flac"  # one voice on both channels: transcribed as mono
STEREO = "en_short/fw_stereo_diarization.wav"  # a different talker on each channel


class HalfwaySplit:
    """A test engine: the talker changes at the middle of the recording (where the audio says it ends)."""

    name = "halfway"

    def __init__(self, settings: AsrSettings) -> None:
        self.names = settings.asr_channel_speakers

    def assign(self, samples: np.ndarray, segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        middle = len(samples) / audio.SAMPLE_RATE / 2
        return [{**s, "speaker": self.names[s["start"] >= middle]} for s in segments]


@pytest.fixture(scope="module")
def jfk(redis_url: str, asr_settings: AsrSettings, speech: Path) -> tuple[dict[str, Any], list[channels.Track]]:
    """The stage's result for a mono recording, and the tracks it heard."""
    with redis.Redis.from_url(redis_url) as conn:
        record = transcribe(conn, asr_settings, speech / JFK)
    assert record["status"] == "done", record["error"]
    data = (speech / JFK).read_bytes()
    heard = channels.tracks(data, channels.channel_count(data), asr_settings, Options())
    assert len(heard) == 1 and heard[0].channel is None
    return record["results"]["asr"], heard


def test_default_is_one_unnamed_speaker(jfk: tuple[dict[str, Any], list[channels.Track]],
                                        asr_settings: AsrSettings, references: dict[str, dict[str, str]]) -> None:
    result, heard = jfk
    assert asr_settings.asr_diarization == "none" and asr_settings.asr_mono_speaker is None
    out = {**result, "segments": [dict(s) for s in result["segments"]]}
    channels.label_speakers(out, heard, diarization.make(asr_settings))
    assert out["segments"] == result["segments"] and "speakers" not in out
    assert all(s["speaker"] is None for s in out["segments"])
    assert textnorm.wer(references[JFK]["transcript"], out["text"]) <= 0.10


def test_none_engine_labels_every_segment_with_the_configured_name(
        jfk: tuple[dict[str, Any], list[channels.Track]], asr_settings: AsrSettings) -> None:
    result, heard = jfk
    settings = asr_settings.model_copy(update={"asr_mono_speaker": "caller"})
    out = {**result, "segments": [dict(s) for s in result["segments"]]}
    channels.label_speakers(out, heard, diarization.make(settings))
    assert len(out["segments"]) == len(result["segments"]) >= 2
    assert {s["speaker"] for s in out["segments"]} == {"caller"} and out["speakers"] == ["caller"]
    # Only the speaker changes.
    strip = [{k: v for k, v in s.items() if k != "speaker"} for s in out["segments"]]
    assert strip == [{k: v for k, v in s.items() if k != "speaker"} for s in result["segments"]]


def test_an_engine_is_chosen_by_name_and_sees_the_audio(jfk: tuple[dict[str, Any], list[channels.Track]],
                                                        asr_settings: AsrSettings,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    result, heard = jfk
    monkeypatch.setitem(diarization.ENGINES, "halfway", f"{__name__}:HalfwaySplit")
    settings = asr_settings.model_copy(update={"asr_diarization": "halfway"})
    out = {**result, "segments": [dict(s) for s in result["segments"]]}
    channels.label_speakers(out, heard, diarization.make(settings))
    middle = result["duration_s"] / 2
    for seg in out["segments"]:
        assert seg["speaker"] == ("customer" if seg["start"] >= middle else "agent"), seg
    assert out["speakers"] == ["agent", "customer"]  # jfk's segments fall on both sides of 5.5 s


def test_two_channel_calls_keep_their_channel_names(conn: redis.Redis, asr_settings: AsrSettings,
                                                    speech: Path) -> None:
    record = transcribe(conn, asr_settings, speech / STEREO)
    assert record["status"] == "done", record["error"]
    result = record["results"]["asr"]
    data = (speech / STEREO).read_bytes()
    heard = channels.tracks(data, 2, asr_settings, Options())
    assert [t.channel for t in heard] == [0, 1]
    settings = asr_settings.model_copy(update={"asr_mono_speaker": "caller"})
    out = {**result, "segments": [dict(s) for s in result["segments"]]}
    channels.label_speakers(out, heard, diarization.make(settings))
    assert out == result and {s["speaker"] for s in out["segments"]} == {"agent", "customer"}


def test_the_settings_know_exactly_the_registered_engines() -> None:
    """The settings validate the name against their own tuple, so that they need not import the registry."""
    assert sorted(DIARIZATION_ENGINES) == sorted(diarization.ENGINES)


def test_an_unknown_engine_is_refused_when_the_worker_starts(redis_url: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="unknown diarisation engine 'pyannote'; known engines: none"):
        AsrSettings(redis_url=redis_url, asr_diarization="pyannote")
    env = {**os.environ, "VQ_REDIS_URL": redis_url, "VQ_ASR_DIARIZATION": "pyannote"}
    started = time.monotonic()
    proc = subprocess.run([str(VENV_BIN / "voicequeue"), "worker", "asr"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "unknown diarisation engine 'pyannote'" in proc.stderr
    assert time.monotonic() - started < 30, "refused before loading any model"
