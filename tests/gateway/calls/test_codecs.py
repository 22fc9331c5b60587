"""G.711 codecs and call audio formats, on real speech."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from faster_whisper.audio import decode_audio

from services.gateway.calls import g711
from services.gateway.calls.formats import AudioFormat, FormatError, Resampler, parse
from shared import audio

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the reference G.711 implementation (CPython's, until 3.13)


def speech16(speech: Path, name: str = "en_short/LDC93S1.wav", rate: int = 16000) -> bytes:
    return (decode_audio(str(speech / name), sampling_rate=rate) * 32767).astype(np.int16).tobytes()


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - got) ** 2), 1e-9)))


def test_g711_matches_the_reference_on_every_sample() -> None:
    every = np.arange(-32768, 32768, dtype=np.int16).tobytes()
    assert g711.pcm_to_ulaw(every) == audioop.lin2ulaw(every, 2)
    assert g711.pcm_to_alaw(every) == audioop.lin2alaw(every, 2)
    codes = bytes(range(256))
    assert g711.ulaw_to_pcm(codes) == audioop.ulaw2lin(codes, 2)
    assert g711.alaw_to_pcm(codes) == audioop.alaw2lin(codes, 2)
    assert g711.pcm_to_ulaw(b"\x00\x00") == b"\xff" and g711.pcm_to_alaw(b"\x00\x00") == b"\xd5"


@pytest.mark.parametrize("codec", ["pcmu", "pcma"])
def test_g711_round_trip_keeps_speech(speech: Path, codec: str) -> None:
    pcm = speech16(speech, rate=8000)
    fmt = AudioFormat(codec, 8000)
    encoded = fmt.from_pcm(pcm)
    assert len(encoded) == len(pcm) // 2  # 8 bits a sample
    back = np.frombuffer(fmt.to_pcm(encoded), dtype=np.int16)
    assert snr_db(np.frombuffer(pcm, dtype=np.int16), back) > 30  # G.711 gives ~38 dB on speech


def test_formats_parse_both_shapes() -> None:
    assert parse("pcm16") == AudioFormat("pcm16", 24000)
    assert parse("g711_ulaw") == AudioFormat("pcmu", 8000)
    assert parse("g711_alaw") == AudioFormat("pcma", 8000)
    assert parse({"type": "audio/pcm", "rate": 24000}) == AudioFormat("pcm16", 24000)
    assert parse({"type": "audio/pcm", "rate": 16000}) == AudioFormat("pcm16", 16000)
    assert parse({"type": "audio/pcmu"}) == AudioFormat("pcmu", 8000)
    assert parse({"type": "audio/pcma"}).ga() == {"type": "audio/pcma"}
    for bad in ("mp3", {"type": "audio/pcm", "rate": 44100}, {"type": "audio/opus"}, 7, None):
        with pytest.raises(FormatError):
            parse(bad)


@pytest.mark.parametrize("src", [8000, 24000])
def test_streaming_resampler_matches_one_shot(speech: Path, src: int) -> None:
    """20 ms frames through the stateful resampler give the one-shot resample (no clicks at frame edges)."""
    pcm = speech16(speech, rate=src)
    frame = src // 50 * 2
    stream = Resampler(src, 16000)
    got = np.frombuffer(b"".join(stream.feed(pcm[i:i + frame]) for i in range(0, len(pcm), frame)), dtype=np.int16)
    whole = audio.resample(np.frombuffer(pcm, dtype=np.int16), src, 16000)
    n = min(len(got), len(whole))
    assert abs(len(got) - len(pcm) // 2 * 16000 / src) < 0.02 * 16000  # at most 20 ms held back in the filter
    assert snr_db(whole[:n], got[:n]) > 40


def test_files_are_told_from_raw_audio(speech: Path) -> None:
    from services.gateway.calls.formats import container
    from tests.gateway.call_helpers import pcm as call_pcm

    wav, flac = speech / "en_short/LDC93S1.wav", speech / "en_short/librispeech-61-70968-0000.flac"
    assert container(wav.read_bytes()) == "a WAV file"
    assert container(flac.read_bytes()) == "a FLAC file"
    raw = call_pcm(wav, 24000)
    assert container(raw) is None and container(g711.pcm_to_ulaw(call_pcm(wav, 8000))) is None
