"""Piper (offline neural TTS, onnxruntime): the default English voice, 22.05 kHz."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime
from piper import PiperVoice, SynthesisConfig

from services.tts.engines.base import Speech, base_language
from shared import models

SHIPPED_VOICE = "en_US-joe-medium"


def voice_paths(voice: str) -> tuple[Path, Path]:
    if voice == SHIPPED_VOICE:
        return models.piper_voice()
    model = Path(voice).expanduser()
    config = model.with_name(model.name + ".json")
    if model.suffix != ".onnx" or not model.exists() or not config.exists():
        raise ValueError(f"unknown piper voice {voice!r}: use {SHIPPED_VOICE} or a path to a voice .onnx")
    return model, config


def _session(model: Path, threads: int) -> onnxruntime.InferenceSession:
    """piper's session with its thread pool capped: onnxruntime starts one thread per core by default, which
    spin against the ASR and LLM threads on a shared node (shared/cpu.py)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


class PiperEngine:
    name = "piper"

    def __init__(self, voice: str = SHIPPED_VOICE, threads: int | None = None) -> None:
        model, config = voice_paths(voice)
        self.voice = voice if voice == SHIPPED_VOICE else model.stem
        self._model = PiperVoice.load(model, config)
        if threads:
            self._model.session = _session(model, threads)
        self.sample_rate = self._model.config.sample_rate
        # "en_US" → "en": piper voices speak one language.
        self.language = base_language(self._model.config.espeak_voice) or "en"
        self._lock = threading.Lock()

    def supports(self, language: str | None) -> bool:
        return language is None or base_language(language) == self.language

    def voice_for(self, voice: str | None, language: str | None) -> str:
        return self.voice

    def synthesize(self, text: str, *, voice: str | None = None, language: str | None = None,
                   speed: float = 1.0) -> Speech:
        # length_scale stretches phoneme durations: 2x speed is half the length.
        config = SynthesisConfig(length_scale=1.0 / speed)
        with self._lock:  # piper's espeak phonemizer is one global instance
            chunks = [c.audio_int16_array for c in self._model.synthesize(text, config)]
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return Speech(pcm, self.sample_rate)

    def warm_up(self) -> None:
        """One short synthesis so the first job does not pay for piper's lazy phonemizer set-up."""
        self.synthesize("Ready.")
