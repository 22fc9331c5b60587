"""Output formats for synthesized speech: WAV (default), MP3 and Ogg/Opus, encoded with PyAV."""

from __future__ import annotations

import io
from typing import cast

import av
import numpy as np

from services.tts.engines.base import Speech
from shared import audio

CONTENT_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "opus": "audio/ogg"}
# format → (encoder, container, output sample rate or None to keep the engine's, bit rate)
_CODECS = {
    "mp3": ("libmp3lame", "mp3", None, 64_000),
    "opus": ("libopus", "ogg", 48000, 32_000),  # Opus runs at 48 kHz whatever it is fed
}


def output_rate(speech: Speech, fmt: str) -> int:
    """The sample rate of `encode(speech, fmt)`."""
    return (_CODECS[fmt][2] if fmt in _CODECS else None) or speech.sample_rate


def encode(speech: Speech, fmt: str) -> bytes:
    if fmt == "wav":
        return audio.to_wav(speech.pcm, speech.sample_rate)
    codec, container, _, bit_rate = _CODECS[fmt]
    rate = output_rate(speech, fmt)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = cast(av.AudioStream, out.add_stream(codec, rate=rate, layout="mono"))
        stream.codec_context.bit_rate = bit_rate
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(speech.pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = speech.sample_rate
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return buf.getvalue()


def read_wav(data: bytes) -> Speech:
    """A WAV this service wrote (mono int16) back into PCM, sample for sample."""
    return Speech(*audio.read_wav(data))


def resample(speech: Speech, rate: int) -> Speech:
    """`speech` at `rate`, exactly as long as it was."""
    return Speech(audio.resample(speech.pcm, speech.sample_rate, rate), rate)


def join(parts: list[Speech]) -> Speech:
    """Sentences back to back, at the first one's sample rate (engines differ: piper 22.05 kHz, edge 24 kHz)."""
    if not parts:
        raise ValueError("nothing to join")
    rate = parts[0].sample_rate
    return Speech(np.concatenate([resample(p, rate).pcm for p in parts]), rate)
