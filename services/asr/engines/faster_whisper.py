"""faster-whisper (CTranslate2) on CPU: the default engine.

A CTranslate2 model does not survive `fork()`: its worker threads stay in the
parent, so the child's first call waits forever. The engine therefore remembers
which process loaded it and loads again in any other one. The copy inherited
from the parent is kept referenced, never freed: freeing it joins threads the
child does not have, and the process aborts (std::system_error).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.vad import get_vad_model

from services.asr.engines.base import FRAMES_PER_S, Confidence, EncoderWindow, OnSegment, Segment, Transcript
from services.asr.engines.vad import speech_only

log = logging.getLogger(__name__)

_INHERITED: list[WhisperModel] = []
_WINDOW = threading.local()  # this thread's transcription: the window asked for, and the longest encoded


class _Whisper(WhisperModel):  # type: ignore[misc,unused-ignore]  # untyped in --strict
    """WhisperModel whose sequential path encodes the window `transcribe` asked for (the batched one pads to 30 s)."""

    def encode(self, features: np.ndarray) -> Any:
        window: EncoderWindow | None = getattr(_WINDOW, "value", None)
        if window is not None:
            features = window.trim(features)
        _WINDOW.seen_s = max(getattr(_WINDOW, "seen_s", 0.0), features.shape[-1] / FRAMES_PER_S)
        return super().encode(features)


class FasterWhisperEngine:
    name = "faster-whisper"

    def __init__(self, model: str, model_dir: Path, *, compute_type: str = "int8", cpu_threads: int = 2,
                 confidence: Confidence | None = None) -> None:
        self.model = model
        self.model_dir = model_dir
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.confidence = confidence or Confidence()
        self._whisper: WhisperModel | None = None
        self._pid = 0
        self._threads = 0
        self._multilingual = False
        self._languages: frozenset[str] = frozenset()

    @property
    def multilingual(self) -> bool:
        if self._whisper is None:
            self._ready()
        return self._multilingual

    @property
    def languages(self) -> frozenset[str]:
        if self._whisper is None:
            self._ready()
        return self._languages

    def load(self, threads: int | None = None) -> float:
        """Load in this process. A parent that will fork loads with one thread: libgomp's thread team
        does not survive fork either, and a child of a parent that ran one hangs in its first parallel loop."""
        start = time.perf_counter()
        if self._whisper is not None and self._pid != os.getpid():
            _INHERITED.append(self._whisper)
        self._threads = threads or self.cpu_threads
        self._whisper = _Whisper(str(self.model_dir), device="cpu", compute_type=self.compute_type,
                                 cpu_threads=self._threads, num_workers=1)
        self._pid = os.getpid()
        self._multilingual = bool(self._whisper.model.is_multilingual)
        self._languages = frozenset(self._whisper.supported_languages)
        get_vad_model()  # Silero VAD (onnxruntime, single-threaded) is fork-safe: load it once
        return time.perf_counter() - start

    def _ready(self) -> WhisperModel:
        """The model, loaded in this process with the configured threads (a fork-safe preload is not)."""
        if self._whisper is None or self._pid != os.getpid() or self._threads != self.cpu_threads:
            seconds = self.load()
            log.info("loaded whisper model", extra={"model": self.model, "seconds": round(seconds, 3)})
        assert self._whisper is not None
        return self._whisper

    def detect_language(self, audio: np.ndarray, *, vad: bool) -> tuple[str, float] | None:
        whisper = self._ready()
        if not self._multilingual:
            return "en", 1.0
        speech = speech_only(audio)[0] if vad else audio
        if speech.shape[0] == 0:
            return None
        language, probability, _ = whisper.detect_language(speech)
        return str(language), float(probability)

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        language: str | None,
        beam_size: int,
        vad: bool,
        hotwords: str | None = None,
        initial_prompt: str | None = None,
        on_segment: OnSegment | None = None,
        batch_size: int = 0,
        window: EncoderWindow | None = None,
    ) -> Transcript:
        whisper = self._ready()
        _WINDOW.value, _WINDOW.seen_s = window, 0.0  # whisper encodes lazily, as the segments are read
        try:
            transcript = self._transcribe(whisper, audio, language=language, beam_size=beam_size, vad=vad,
                                          hotwords=hotwords, initial_prompt=initial_prompt, on_segment=on_segment,
                                          batch_size=batch_size)
            if batch_size <= 0 and _WINDOW.seen_s:  # the batched pipeline encodes through the bare model
                transcript.encoder_window_s = _WINDOW.seen_s
            return transcript
        finally:
            _WINDOW.value = None

    def _transcribe(self, whisper: WhisperModel, audio: np.ndarray, *, language: str | None, beam_size: int,
                    vad: bool, hotwords: str | None, initial_prompt: str | None, on_segment: OnSegment | None,
                    batch_size: int) -> Transcript:
        if batch_size > 0:
            # Windows are cut at VAD pauses, never inside a word, so nothing is lost or repeated at their
            # edges. The cut needs the VAD whatever `vad` says (the pipeline refuses audio over 30 s
            # without it); the pipeline is a thin wrapper over the loaded model, made per call.
            pieces, info = BatchedInferencePipeline(whisper).transcribe(
                audio, language=language, beam_size=beam_size, vad_filter=True, batch_size=batch_size,
                hotwords=hotwords or None, initial_prompt=initial_prompt or None,
            )
        else:
            pieces, info = whisper.transcribe(
                audio, language=language, beam_size=beam_size, vad_filter=vad,
                hotwords=hotwords or None, initial_prompt=initial_prompt or None,
            )
        segments = []
        for piece in pieces:  # a generator: each segment is decoded on demand
            segment = self._segment(piece)
            segments.append(segment)
            if on_segment is not None:
                on_segment(segment)
        return Transcript(
            text="".join(s.text for s in segments).strip(),
            language=info.language,
            language_probability=float(info.language_probability),
            duration_s=float(info.duration),
            segments=segments,
        )

    def _segment(self, piece: Any) -> Segment:
        return Segment(
            start=float(piece.start), end=float(piece.end), text=piece.text,
            avg_logprob=float(piece.avg_logprob), no_speech_prob=float(piece.no_speech_prob),
            low_confidence=self.confidence.is_low(piece.avg_logprob, piece.no_speech_prob),
        )
