"""Piper (offline neural TTS, onnxruntime): the default English voice, 22.05 kHz."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import cast

import numpy as np
import onnx
import onnxruntime
from piper import AudioChunk, PiperConfig, PiperVoice, SynthesisConfig
from piper.patch_voice_with_alignment import add_alignment_output

from services.tts.engines.base import Speech, base_language
from shared import models

SHIPPED_VOICE = "en_US-joe-medium"
# Alignment entries that are no sound of a word: the word gap, start and end of a sentence, punctuation.
SILENT = frozenset(" ^$_.,:;!?…—-\"'()")


def voice_paths(voice: str) -> tuple[Path, Path]:
    if voice == SHIPPED_VOICE:
        return models.piper_voice()
    model = Path(voice).expanduser()
    config = model.with_name(model.name + ".json")
    if model.suffix != ".onnx" or not model.exists() or not config.exists():
        raise ValueError(f"unknown piper voice {voice!r}: use {SHIPPED_VOICE} or a path to a voice .onnx")
    return model, config


def _with_alignments(model: Path) -> bytes:
    """The voice with its per-phoneme sample counts as a second output (patched in memory, as piper's own
    `include_alignments` does), so each word's end time is known."""
    graph = onnx.load(str(model))
    with contextlib.suppress(ValueError):  # patched already, or a voice without the tensor: no word times
        add_alignment_output(graph)
    return cast(bytes, graph.SerializeToString())


def _session(model: bytes, threads: int | None) -> onnxruntime.InferenceSession:
    """piper's session with its thread pool capped: onnxruntime starts one thread per core by default, which
    spin against the ASR and LLM threads on a shared node (shared/cpu.py)."""
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def word_ends(chunks: list[AudioChunk], rate: int) -> list[float] | None:
    """When each spoken word ends (seconds): where espeak's word gap (" ") begins, the last word of a chunk at
    the chunk's end. None when a chunk has no alignments."""
    ends: list[float] = []
    samples = 0
    for chunk in chunks:
        if chunk.phoneme_alignments is None:
            return None
        in_word = False
        for aligned in chunk.phoneme_alignments:
            if aligned.phoneme == " " and in_word:
                ends.append(samples / rate)
                in_word = False
            elif aligned.phoneme not in SILENT:
                in_word = True
            samples += aligned.num_samples
        if in_word:
            ends.append(samples / rate)
        elif ends:  # a gap before the end ("steps: "): the last word runs to the chunk's end
            ends[-1] = samples / rate
    return ends


class PiperEngine:
    name = "piper"

    def __init__(self, voice: str = SHIPPED_VOICE, threads: int | None = None) -> None:
        model, config = voice_paths(voice)
        self.voice = voice if voice == SHIPPED_VOICE else model.stem
        self._model = PiperVoice(session=_session(_with_alignments(model), threads),
                                 config=PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8"))))
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
            chunks = list(self._model.synthesize(text, config, include_alignments=True))
        pcm = np.concatenate([c.audio_int16_array for c in chunks]) if chunks else np.zeros(0, dtype=np.int16)
        ends = word_ends(chunks, self.sample_rate)
        # espeak says "$25" as "twenty five dollars" and "Dr." as "doctor": then its words are not the text's.
        return Speech(pcm, self.sample_rate, ends if ends and len(ends) == len(text.split()) else None)

    def warm_up(self) -> None:
        """One short synthesis so the first job does not pay for piper's lazy phonemizer set-up."""
        self.synthesize("Ready.")
