"""Audio in and out with PyAV (no ffmpeg binary): uploads decoded and checked (validation, duration,
16 kHz PCM), and the mono 16-bit WAVs the services write read back, resampled and written.

Resampling uploads follows faster-whisper's own `decode_audio` (s16, then /32768), so
the ASR stage sees exactly the samples raw faster-whisper would.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

import av
import numpy as np

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """Input that is not usable audio; `code` names the problem for the API error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class AudioInfo:
    duration_s: float
    sample_rate: int
    channels: int
    codec: str
    container: str

    def as_dict(self) -> dict[str, object]:
        return {"duration_s": round(self.duration_s, 3), "sample_rate": self.sample_rate,
                "channels": self.channels, "codec": self.codec, "container": self.container}


def _open(data: bytes) -> av.container.InputContainer:
    if not data:
        raise AudioError("empty_file", "the uploaded file is empty")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError) as exc:
        raise AudioError("not_audio", f"the file is not a recognised audio format ({exc.__class__.__name__})") from exc
    if not container.streams.audio:
        container.close()
        raise AudioError("not_audio", "the file has no audio stream")
    return container


def _wav_missing_bytes(data: bytes) -> int:
    """How many bytes of a RIFF/WAVE `data` chunk the header promises but the file lacks.

    PyAV decodes a cut WAV without complaint, so truncation is read off the header.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if data[pos : pos + 4] == b"data":
            if size in (0, 0xFFFFFFFF):  # streamed WAVs leave the size unset
                return 0
            return max(0, pos + 8 + size - len(data))
        pos += 8 + size + (size & 1)
    return 0


def probe(data: bytes, max_duration_s: float | None = None) -> AudioInfo:
    """Decode the whole file once to prove it is intact and measure its true duration."""
    container = _open(data)
    with container:
        stream = container.streams.audio[0]
        rate = stream.rate or stream.codec_context.sample_rate
        declared = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        if declared is None and container.duration:
            declared = container.duration / 1_000_000
        samples = 0
        try:
            for frame in container.decode(stream):
                samples += frame.samples
                if max_duration_s is not None and samples / rate > max_duration_s:
                    raise AudioError("too_long", f"audio is longer than the {max_duration_s:g} s limit")
        except av.error.FFmpegError as exc:
            raise AudioError("corrupt", f"the audio data is corrupt: {exc}") from exc
        info = AudioInfo(samples / rate if rate else 0.0, int(rate or 0),
                         int(stream.codec_context.channels or 1), stream.codec_context.name,
                         container.format.name)
    if samples == 0:
        raise AudioError("corrupt", "the file contains no decodable audio samples")
    if missing := _wav_missing_bytes(data):
        raise AudioError("truncated", f"the WAV file is truncated: {missing} bytes of audio data are missing")
    if declared and declared > 1.0 and info.duration_s < 0.9 * declared - 0.1:
        raise AudioError(
            "truncated",
            f"the file is truncated: header says {declared:.2f} s but only {info.duration_s:.2f} s decode",
        )
    return info


def decode(data: bytes, *, sample_rate: int = SAMPLE_RATE, split_stereo: bool = False) -> np.ndarray:
    """float32 PCM at `sample_rate`: shape (n,) mono, or (2, n) when `split_stereo`."""
    container = _open(data)
    layout = "stereo" if split_stereo else "mono"
    resampler = av.AudioResampler(format="s16", layout=layout, rate=sample_rate)
    chunks: list[np.ndarray] = []
    with container:
        try:
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise AudioError("corrupt", f"the audio data is corrupt: {exc}") from exc
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    audio = pcm.astype(np.float32) / 32768.0
    if split_stereo:
        return np.stack([audio[0::2], audio[1::2]])
    return audio


def to_wav(pcm: np.ndarray, sample_rate: int) -> bytes:
    """int16 or float mono PCM → WAV bytes."""
    if pcm.dtype != np.int16:
        pcm = (np.clip(pcm, -1.0, 1.0) * 32767).astype(np.int16)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A mono 16-bit WAV (as `to_wav` writes them) → (its int16 samples, its sample rate), sample for sample."""
    with wave.open(io.BytesIO(data), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError("expected a mono 16-bit WAV")
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), w.getframerate()


def resample(pcm: np.ndarray, rate: int, target: int) -> np.ndarray:
    """int16 mono `pcm` at `target` Hz, exactly round(n * target / rate) samples long, so durations add up."""
    if rate == target or not len(pcm):
        return pcm
    resampler = av.AudioResampler(format="s16", layout="mono", rate=target)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1), format="s16",
                                       layout="mono")
    frame.sample_rate = rate
    parts = [f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]]
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
    n = round(len(pcm) * target / rate)
    out = out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))
    return out.astype(np.int16, copy=False)
