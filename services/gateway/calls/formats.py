"""Call audio formats: what the caller sends and hears, and the conversions to the 16 kHz PCM the VAD and ASR use.

The protocol names formats two ways: GA `{"type": "audio/pcm", "rate": 24000}` (or `audio/pcmu`,
`audio/pcma`), beta `"pcm16"`, `"g711_ulaw"`, `"g711_alaw"`. Both map to one `AudioFormat`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from services.gateway.calls import g711

VAD_RATE = 16000
PCM_RATES = (8000, 16000, 24000)
_BETA = {"pcm16": ("pcm16", 24000), "g711_ulaw": ("pcmu", 8000), "g711_alaw": ("pcma", 8000)}
_GA = {"audio/pcm": "pcm16", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}


class FormatError(ValueError):
    """A format the protocol (or this server) does not know."""


@dataclass(frozen=True)
class AudioFormat:
    codec: str  # pcm16, pcmu or pcma
    rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.codec == "pcm16" else 1

    def duration_ms(self, n_bytes: int) -> float:
        return n_bytes / self.bytes_per_sample / self.rate * 1000

    def ga(self) -> dict[str, Any]:
        kind = {v: k for k, v in _GA.items()}[self.codec]
        return {"type": kind, "rate": self.rate} if self.codec == "pcm16" else {"type": kind}

    def beta(self) -> str:
        return {v[0]: k for k, v in _BETA.items()}[self.codec]

    def to_pcm(self, data: bytes) -> bytes:
        """The caller's bytes as 16-bit PCM at `rate`."""
        if self.codec == "pcmu":
            return g711.ulaw_to_pcm(data)
        if self.codec == "pcma":
            return g711.alaw_to_pcm(data)
        return data[: len(data) - len(data) % 2]

    def from_pcm(self, pcm: bytes) -> bytes:
        """16-bit PCM at `rate` in this format."""
        if self.codec == "pcmu":
            return g711.pcm_to_ulaw(pcm)
        if self.codec == "pcma":
            return g711.pcm_to_alaw(pcm)
        return pcm


PCM24 = AudioFormat("pcm16", 24000)
ULAW8 = AudioFormat("pcmu", 8000)


# Files sent where raw samples were declared: their first bytes say so (raw audio that starts like one of
# these is a 1 in 2^32 chance per append).
_CONTAINERS = ((b"RIFF", 8, b"WAVE", "a WAV file"), (b"OggS", 0, b"", "an Ogg file"), (b"fLaC", 0, b"", "a FLAC file"),
               (b"ID3", 0, b"", "an MP3 file"), (b"\x1aE\xdf\xa3", 0, b"", "a WebM/Matroska file"))


def container(data: bytes) -> str | None:
    """What kind of file `data` is, when it is one rather than raw samples."""
    for magic, at, second, name in _CONTAINERS:
        if data.startswith(magic) and (not second or data[at:at + len(second)] == second):
            return name
    return None


def parse(value: Any) -> AudioFormat:
    """A format in either shape; a GA `audio/pcm` may name 8, 16 or 24 kHz (seed 004 sends 16 kHz)."""
    if isinstance(value, str):
        if value not in _BETA:
            raise FormatError(f"unknown audio format {value!r}: use one of {', '.join(_BETA)}")
        return AudioFormat(*_BETA[value])
    if isinstance(value, dict) and value.get("type") in _GA:
        codec = _GA[value["type"]]
        if codec != "pcm16":
            return AudioFormat(codec, 8000)
        rate = value.get("rate", 24000)
        if rate not in PCM_RATES:
            raise FormatError(f"audio/pcm rate {rate!r} is not supported: use one of {PCM_RATES}")
        return AudioFormat(codec, int(rate))
    raise FormatError(f"unknown audio format {value!r}: use {{'type': 'audio/pcm', 'rate': 24000}}, "
                      "'audio/pcmu' or 'audio/pcma'")


class Resampler:
    """16-bit mono PCM from one rate to another, frame by frame, with the filter state kept between frames
    (resampling each 20 ms frame on its own would click at every frame edge)."""

    def __init__(self, src: int, dst: int) -> None:
        self.src, self.dst = src, dst
        self._av = av.AudioResampler(format="s16", layout="mono", rate=dst) if src != dst else None
        self._pts = 0

    def feed(self, pcm: bytes) -> bytes:
        if self._av is None or not pcm:
            return pcm
        samples = np.frombuffer(pcm, dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.src
        frame.pts = self._pts
        self._pts += samples.shape[1]
        return b"".join(f.to_ndarray().tobytes() for f in self._av.resample(frame))
