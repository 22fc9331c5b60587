"""Which signals a recording is transcribed as: mono, or each channel of a two-channel call on its own.

Contact-centre recordings put the agent and the customer on separate channels; a
down-mix garbles them when they talk over each other (WER 0.68 → 0.00 per channel on
en_short/fw_stereo_diarization.wav).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from services.asr.config import AsrSettings
from services.asr.diarization.base import Diarizer
from shared import audio
from shared.jobs import Options
from shared.stage import StageError

SAMPLE_RATE = audio.SAMPLE_RATE
SILENT_VARIANCE = 1e-10  # -100 dBFS: a channel this quiet carries nothing
DIGITAL_SILENCE_S = 1.0  # runs of exact zeros this long are filled before VAD (see fill_digital_silence)
NOISE_FLOOR = 1e-4  # -80 dBFS RMS


def decode(data: bytes, *, split_stereo: bool = False) -> np.ndarray:
    """16 kHz float32: mono (n,), or (2, n) when `split_stereo`. More than two channels are down-mixed."""
    try:
        samples = audio.decode(data, split_stereo=split_stereo)
    except audio.AudioError as exc:
        raise StageError(exc.code, exc.message) from exc
    if samples.shape[-1] == 0:
        raise StageError("corrupt", "the file contains no decodable audio samples")
    return samples


def channel_count(data: bytes) -> int:
    """Channels as the container header gives them, for jobs submitted without `inputs.channels`."""
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            return int(container.streams.audio[0].codec_context.channels or 1)
    except (av.error.FFmpegError, ValueError, IndexError):
        return 1  # decode() says what is wrong with the file


def channel_correlation(pair: np.ndarray) -> float:
    """Pearson correlation of the two channels: ~1 one signal on both, ~0 a different talker on each.

    Unlike the energy of their difference it ignores a gain difference between the channels. Summed in
    float64 blocks, so an hour-long call needs no float64 copy of itself.
    """
    sums = np.zeros(5)
    for at in range(0, pair.shape[1], SAMPLE_RATE * 60):
        left = pair[0, at : at + SAMPLE_RATE * 60].astype(np.float64)
        right = pair[1, at : at + SAMPLE_RATE * 60].astype(np.float64)
        sums += (left.sum(), right.sum(), left @ left, right @ right, left @ right)
    n = pair.shape[1]
    mean_l, mean_r = sums[0] / n, sums[1] / n
    var_l, var_r = sums[2] / n - mean_l**2, sums[3] / n - mean_r**2
    if var_l < SILENT_VARIANCE or var_r < SILENT_VARIANCE:
        # Both silent: nothing to tell apart. One silent: a talker on one channel only, still worth labelling.
        return 1.0 if max(var_l, var_r) < SILENT_VARIANCE else 0.0
    return float((sums[4] / n - mean_l * mean_r) / np.sqrt(var_l * var_r))


def fill_digital_silence(samples: np.ndarray) -> np.ndarray:
    """`samples` with every run of exact zeros of DIGITAL_SILENCE_S or more replaced by a -80 dBFS noise floor.

    Silero VAD (which faster-whisper and our openai-whisper engine both run) misses speech that follows
    seconds of exact digital silence, a known trait of its newer models with near-zero input
    (snakers4/silero-vad#396). A call's channel is often digitally silent while the other side talks:
    on long/mfa_michaelandsickmichael.wav the right channel, silent for its first 26.7 s, lost its first
    8 s of speech (WER 0.42; 0.17 with the floor). Speech never holds exact zeros that long, and the
    floor sits 60-70 dB under it, so transcripts are otherwise unchanged (measured: the other three
    channels of the stereo test clips transcribe exactly as without it).
    """
    zero = samples == 0
    if not zero.any():
        return samples
    edges = np.flatnonzero(np.diff(zero.astype(np.int8), prepend=0, append=0))
    starts, ends = edges[0::2], edges[1::2]
    long = ends - starts >= DIGITAL_SILENCE_S * SAMPLE_RATE
    if not long.any():
        return samples
    filled = samples.copy()
    noise = np.random.default_rng(0)  # seeded: the same file always gives the same transcript
    for a, b in zip(starts[long], ends[long], strict=True):
        filled[a:b] = noise.standard_normal(b - a, dtype=np.float32) * NOISE_FLOOR
    return filled


@dataclass
class Track:
    """What one transcription pass hears: the whole recording, or one channel of a two-channel call."""

    samples: np.ndarray
    channel: int | None = None
    speaker: str | None = None


def tracks(data: bytes, channels: int, settings: AsrSettings, options: Options) -> list[Track]:
    """One mono track, or one track per channel when the two channels carry different signals."""
    if channels != 2:
        return [Track(decode(data))]
    pair = decode(data, split_stereo=True)
    correlation = channel_correlation(pair)
    if correlation >= settings.asr_mono_correlation:
        # One signal twice: the down-mix is what raw faster-whisper would hear.
        return [Track(decode(data))]
    if correlation <= -settings.asr_mono_correlation:
        return [Track(pair[0])]  # one signal with a channel's polarity flipped: a down-mix would cancel it
    speakers = channel_speakers(options, settings)
    heard = [fill_digital_silence(channel) if settings.asr_vad else channel for channel in pair]
    return [Track(heard[i], i, speakers[i]) for i in range(2)]


def channel_speakers(options: Options, settings: AsrSettings) -> list[str]:
    names = options.channel_speakers or settings.asr_channel_speakers
    if not (isinstance(names, list) and len(names) == 2 and all(isinstance(n, str) and n.strip() for n in names)):
        raise StageError("bad_channel_speakers", "channel_speakers must be a list of two names: the left "
                                                 f"channel's speaker, then the right's (got {names!r})")
    return [n.strip() for n in names]


def label_speakers(out: dict[str, Any], heard: list[Track], diarizer: Diarizer) -> None:
    """Name the speakers of a mono recording's segments in the stage result `out` (built from `heard`).

    A two-channel call keeps its channels' names. When any segment gets a name, `out["speakers"]`
    lists them in order of first appearance, as it does for two-channel calls.
    """
    if len(heard) != 1 or heard[0].channel is not None:
        return
    out["segments"] = diarizer.assign(heard[0].samples, out["segments"])
    names = list(dict.fromkeys(s["speaker"] for s in out["segments"] if s.get("speaker")))
    if names:
        out["speakers"] = names
