"""openai-whisper (PyTorch) as a second engine, on the same weights as faster-whisper.

The checkpoint is converted from the CTranslate2 model on first use (see
`services.asr.convert`); the tokenizer's tiktoken files ship inside the
package, so nothing is downloaded. openai-whisper has no VAD of its own: this
engine uses the Silero VAD bundled with faster-whisper, cutting and restoring
timestamps the same way, so both engines see the same speech.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from faster_whisper.vad import SpeechTimestampsMap

from services.asr import convert
from services.asr.engines.base import Confidence, EncoderWindow, OnSegment, Segment, Transcript
from services.asr.engines.vad import SAMPLE_RATE, speech_only

# faster-whisper's defaults, so that both engines decode alike.
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BEST_OF = 5


def _whisper() -> Any:
    # libgomp threads spin while waiting; on a busy 2-core machine two spinning
    # threads made decoding 13x slower (11.6 s instead of 0.9 s for an 11 s clip).
    # Must be set before torch (and its libgomp) is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import whisper

    return whisper


class OpenAIWhisperEngine:
    name = "openai-whisper"

    def __init__(self, model: str, models_dir: Path, *, cpu_threads: int = 2,
                 confidence: Confidence | None = None) -> None:
        self.model = model
        self.models_dir = models_dir
        self.cpu_threads = cpu_threads
        self.confidence = confidence or Confidence()
        self._whisper: Any = None

    @property
    def multilingual(self) -> bool:
        return bool(self._model().is_multilingual)

    @property
    def languages(self) -> frozenset[str]:
        whisper = _whisper()
        model = self._model()
        if not model.is_multilingual:
            return frozenset({"en"})
        return frozenset(list(whisper.tokenizer.LANGUAGES)[: model.num_languages])

    def load(self, threads: int | None = None) -> float:
        """Convert (once) and load the checkpoint. Unlike CTranslate2, a torch model survives fork as
        long as the parent never ran a multi-threaded op; so a parent that will fork passes threads=1."""
        import torch

        start = time.perf_counter()
        whisper = _whisper()
        torch.set_num_threads(threads or self.cpu_threads)
        checkpoint = convert.convert_named(self.model, self.models_dir)
        self._whisper = whisper.load_model(str(checkpoint), device="cpu")
        return time.perf_counter() - start

    def _model(self) -> Any:
        if self._whisper is None:
            self.load()
        return self._whisper

    def _ready(self) -> Any:
        """The model, with torch set to the configured threads in this process (a fork-safe preload is not)."""
        import torch

        self._model()
        if torch.get_num_threads() != self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
        return self._whisper

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
        batch_size: int = 0,  # no batched decode in openai-whisper: always sequential
        window: EncoderWindow | None = None,  # openai-whisper's decode pads to 30 s: not trimmed
    ) -> Transcript:
        whisper = _whisper()
        model = self._ready()
        duration = audio.shape[0] / SAMPLE_RATE
        speech, ts_map = speech_only(audio) if vad else (audio, None)
        if language is None and not model.is_multilingual:
            language = "en"
        if speech.shape[0] == 0:
            return Transcript("", language or "en", 1.0, duration, [])
        probability = 1.0
        if language is None:
            language, probability = self._detect(speech)
        # openai-whisper has no hotwords: they go in front of the prompt, carried into every window
        # like faster-whisper does with them.
        prompt = " ".join(p for p in (hotwords, initial_prompt) if p) or None
        result = whisper.transcribe(
            model, speech, language=language, temperature=TEMPERATURES, best_of=BEST_OF,
            beam_size=beam_size if beam_size > 1 else None, fp16=False, verbose=None,
            initial_prompt=prompt, carry_initial_prompt=bool(hotwords),
        )
        segments = []
        for raw in result["segments"]:
            segment = self._segment(raw, ts_map)
            segments.append(segment)
            if on_segment is not None:
                on_segment(segment)
        return Transcript("".join(s.text for s in segments).strip(), language, probability, duration, segments)

    def detect_language(self, audio: np.ndarray, *, vad: bool) -> tuple[str, float] | None:
        model = self._ready()
        if not model.is_multilingual:
            return "en", 1.0
        speech = speech_only(audio)[0] if vad else audio
        return self._detect(speech) if speech.shape[0] else None

    def _detect(self, speech: np.ndarray) -> tuple[str, float]:
        whisper = _whisper()
        model = self._whisper
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(speech), model.dims.n_mels)
        _, probs = model.detect_language(mel)
        best = max(probs, key=probs.get)
        return str(best), float(probs[best])

    def _segment(self, raw: dict[str, Any], ts_map: SpeechTimestampsMap | None) -> Segment:
        start, end = float(raw["start"]), float(raw["end"])
        if ts_map is not None:
            start, end = ts_map.get_original_time(start), ts_map.get_original_time(end, is_end=True)
        return Segment(
            start=start, end=end, text=raw["text"],
            avg_logprob=float(raw["avg_logprob"]), no_speech_prob=float(raw["no_speech_prob"]),
            low_confidence=self.confidence.is_low(raw["avg_logprob"], raw["no_speech_prob"]),
        )

