"""Streaming endpointing: Silero VAD (the ONNX model faster-whisper ships) over 32 ms frames at 16 kHz.

`Silero` scores one 512-sample frame at a time, carrying the model's LSTM state and the
64-sample context between calls, so a stream is scored exactly as faster-whisper scores
the whole file at once. `Endpointer` turns the scores into speech started / stopped, with
the server_vad parameters (threshold, silence_duration_ms) and a minimum speech duration:
a sound shorter than that (a cough, a click, a burst of noise) is a false start and never
reaches the caller's turn or interrupts the bot.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

RATE = 16000
FRAME = 512  # samples: 32 ms
FRAME_MS = FRAME * 1000 // RATE
CONTEXT = 64


@cache
def _model() -> Any:
    from faster_whisper.vad import get_vad_model

    return get_vad_model()


def load() -> bool:
    """Load the model now (at gateway start) rather than on the first call's first frame. False when
    faster-whisper is not installed (the `calls` extra): the gateway then serves everything but calls."""
    try:
        _model()
    except ImportError:
        return False
    return True


class Silero:
    """One audio stream's speech probabilities, frame by frame."""

    def __init__(self) -> None:
        self.h = np.zeros((1, 1, 128), dtype=np.float32)
        self.c = np.zeros((1, 1, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, frame: np.ndarray) -> float:
        """P(speech) for 512 float32 samples in [-1, 1]."""
        window = np.concatenate([self.context, frame])[None, :]
        out, self.h, self.c = _model().session.run(None, {"input": window, "h": self.h, "c": self.c})
        self.context = frame[-CONTEXT:]
        return float(np.asarray(out).reshape(-1)[0])


@dataclass
class VadParams:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    min_speech_ms: int = 200  # shorter sounds are false starts
    pause_ms: int = 200  # a pause this long inside speech is a place to cut the audio for early ASR

    @property
    def neg_threshold(self) -> float:
        # Silero's own hysteresis: once speaking, only a clearly lower score counts as silence.
        return max(self.threshold - 0.15, 0.01)


@dataclass
class VadEvent:
    kind: str  # started, stopped, false_start, pause, resumed
    ms: int  # started: speech onset; stopped: end of speech; false_start: onset; pause: where the pause began;
    # resumed: where speech came back after a pause
    duration_ms: int = 0  # false_start: how long the sound lasted


class Endpointer:
    """Feed 16 kHz 16-bit PCM in any sizes; get VAD events on the stream's own clock (ms since its first
    sample)."""

    def __init__(self, params: VadParams | None = None) -> None:
        self.params = params or VadParams()
        self.silero = Silero()
        self.pending = np.zeros(0, dtype=np.float32)
        self.frames = 0
        self.state = "idle"  # idle → pending (sound, not yet long enough) → speaking → idle
        self.onset_ms = 0
        self.speech_ms = 0
        self.silence_ms = 0
        self.paused = False
        self.last_prob = 0.0

    @property
    def now_ms(self) -> int:
        return self.frames * FRAME_MS

    @property
    def speaking(self) -> bool:
        return self.state == "speaking"

    def feed(self, pcm: bytes) -> list[VadEvent]:
        samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        self.pending = np.concatenate([self.pending, samples])
        out: list[VadEvent] = []
        while len(self.pending) >= FRAME:
            frame, self.pending = self.pending[:FRAME], self.pending[FRAME:]
            self.last_prob = self.silero(frame)
            event = self._step(self.last_prob)
            self.frames += 1
            if event is not None:
                out.append(event)
        return out

    def _step(self, p: float) -> VadEvent | None:
        params, start_ms = self.params, self.now_ms
        voiced, silent = p >= params.threshold, p < params.neg_threshold
        if self.state == "idle":
            if voiced:
                self.state, self.onset_ms, self.speech_ms, self.silence_ms = "pending", start_ms, FRAME_MS, 0
            return None
        if voiced or (not silent and self.silence_ms == 0):
            self.speech_ms += FRAME_MS
            resumed = self.paused and self.state == "speaking"
            self.silence_ms, self.paused = 0, False
            if resumed:
                return VadEvent("resumed", start_ms)
        else:
            self.silence_ms += FRAME_MS
        if self.state == "pending":
            if self.speech_ms >= params.min_speech_ms:
                self.state = "speaking"
                return VadEvent("started", self.onset_ms)
            if self.silence_ms >= min(params.silence_duration_ms, 300):
                self.state = "idle"
                return VadEvent("false_start", self.onset_ms, self.speech_ms)
            return None
        silence_began = start_ms + FRAME_MS - self.silence_ms
        if self.silence_ms >= params.silence_duration_ms:
            self.state = "idle"
            return VadEvent("stopped", silence_began)
        if self.silence_ms >= params.pause_ms and not self.paused:
            self.paused = True
            return VadEvent("pause", silence_began)
        return None
