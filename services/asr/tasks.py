"""The ASR stage: the job's audio blob → a timed transcript, flagged when a human should check it."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from services.asr.config import AsrSettings
from services.asr.engines.base import AsrEngine, Confidence, Segment, Transcript
from shared import audio, languages, metrics, models
from shared.stage import StageContext, StageError, job_connection
from shared.stage import run as run_stage

log = logging.getLogger(__name__)

SETTINGS: AsrSettings | None = None
ENGINES: dict[tuple[Any, ...], AsrEngine] = {}


class Cancelled(Exception):
    """The job was cancelled while its audio was being transcribed."""


def make_engine(settings: AsrSettings, model: str) -> AsrEngine:
    confidence = Confidence(settings.asr_low_conf_logprob, settings.asr_low_conf_no_speech)
    if settings.asr_engine == "openai-whisper":
        from services.asr.engines.openai_whisper import OpenAIWhisperEngine

        return OpenAIWhisperEngine(model, settings.models_dir, cpu_threads=settings.asr_cpu_threads,
                                   confidence=confidence)
    from services.asr.engines.faster_whisper import FasterWhisperEngine

    return FasterWhisperEngine(model, models.whisper_ct2(model, settings.models_dir),
                               compute_type=settings.asr_compute_type, cpu_threads=settings.asr_cpu_threads,
                               confidence=confidence)


def _key(settings: AsrSettings, model: str) -> tuple[Any, ...]:
    return (settings.asr_engine, model, settings.asr_compute_type, settings.asr_cpu_threads,
            settings.asr_low_conf_logprob, settings.asr_low_conf_no_speech, str(settings.models_dir))


def engine(settings: AsrSettings, model: str) -> AsrEngine:
    """The engine for `model` under these settings, made once per process."""
    key = _key(settings, model)
    if key not in ENGINES:
        ENGINES[key] = make_engine(settings, model)
    return ENGINES[key]


def preload(settings: AsrSettings | None = None, *, forking: bool = False) -> dict[str, float]:
    """Load the English and the multilingual model; returns {model: load seconds}.

    `forking`: the caller forks job processes after this, so load single-threaded
    (see the engines' notes on fork); each job process then finishes loading itself.
    """
    global SETTINGS
    SETTINGS = settings or AsrSettings()
    seconds = {}
    for model in dict.fromkeys((SETTINGS.asr_model, SETTINGS.asr_multilingual_model)):
        seconds[model] = engine(SETTINGS, model).load(1 if forking else None)
    return seconds


def run(job_id: str) -> None:
    """rq entry point."""
    settings = SETTINGS or AsrSettings()
    run_stage("asr", job_id, job_connection(), settings, work)


def choose(settings: AsrSettings, language: str | None) -> tuple[AsrEngine, str | None]:
    """The engine for a language, and the language to ask it for (None: let it detect)."""
    primary = engine(settings, settings.asr_model)
    if language not in (None, "en") and not primary.multilingual:
        primary = engine(settings, settings.asr_multilingual_model)
    if language is None and not primary.multilingual:
        language = "en"
    if language is not None and language not in primary.languages:
        raise StageError("unsupported_language", f"language {language!r} is not one whisper ({primary.model}) "
                                                 "can transcribe")
    return primary, language


def decode(data: bytes) -> np.ndarray:
    """16 kHz mono float32. Stereo is down-mixed; `audio.decode(split_stereo=True)` is the seam for
    transcribing each channel (agent, customer) on its own."""
    try:
        samples = audio.decode(data)
    except audio.AudioError as exc:
        raise StageError(exc.code, exc.message) from exc
    if samples.shape[0] == 0:
        raise StageError("corrupt", "the file contains no decodable audio samples")
    return samples


def work(ctx: StageContext) -> dict[str, Any]:
    settings = ctx.settings if isinstance(ctx.settings, AsrSettings) else (SETTINGS or AsrSettings())
    job = ctx.job
    blob_id = job["inputs"].get("blob_id")
    blob = ctx.blobs.get(blob_id) if blob_id else None
    if blob is None:
        raise StageError("audio_missing", "the job's audio is gone (it expired or was deleted)")
    samples = decode(blob[0])
    options = job["options"]
    started = time.perf_counter()
    requested = languages.normalize(options.get("language")) or languages.normalize(settings.asr_language)
    asr, language = choose(settings, requested)
    prompt = options.get("initial_prompt")
    detected = None
    if language is None and not prompt and settings.asr_language_prompts:
        # The prompt depends on the language, so find it first (one more encoder pass over 30 s).
        detected = asr.detect_language(samples, vad=settings.asr_vad)
        language = detected[0] if detected else None
    prompt = prompt or settings.asr_language_prompts.get(language or "")

    partials: list[Segment] = []

    def on_segment(segment: Segment) -> None:
        if ctx.cancelled():  # the caller barged in or deleted the job: stop decoding
            raise Cancelled
        ctx.emit("asr.partial", {"index": len(partials), **_segment_dict(segment)})
        partials.append(segment)

    try:
        transcript = asr.transcribe(samples, language=language, beam_size=settings.asr_beam_size,
                                    vad=settings.asr_vad, hotwords=_hotwords(options), initial_prompt=prompt,
                                    on_segment=on_segment)
    except Cancelled:
        return {"cancelled": True}
    if detected:
        transcript.language_probability = detected[1]
    elapsed = time.perf_counter() - started
    if transcript.duration_s:
        metrics.observe(metrics.RTF, elapsed / transcript.duration_s, stage="asr")
    metrics.inc(metrics.AUDIO_SECONDS, transcript.duration_s, stage="asr")
    return result(transcript, asr, elapsed)


def _hotwords(options: dict[str, Any]) -> str | None:
    """`hotwords` as a string or a list of words and phrases."""
    hotwords = options.get("hotwords")
    if isinstance(hotwords, list):
        hotwords = " ".join(str(w) for w in hotwords)
    return str(hotwords) if hotwords else None


def result(transcript: Transcript, asr: AsrEngine, elapsed_s: float) -> dict[str, Any]:
    segments = [_segment_dict(s) for s in transcript.segments]
    duration = transcript.duration_s
    return {
        "text": transcript.text,
        "language": transcript.language,
        "language_probability": round(transcript.language_probability, 4),
        "duration_s": round(duration, 3),
        "segments": segments,
        # No words at all (silence, noise) is as doubtful as a shaky segment: a human should listen.
        "low_confidence": not transcript.text or any(s.low_confidence for s in transcript.segments),
        "engine": asr.name,
        "model": asr.model,
        "rtf": round(elapsed_s / duration, 4) if duration else 0.0,
    }


def _segment_dict(segment: Segment) -> dict[str, Any]:
    return {
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text.strip(),
        "avg_logprob": round(segment.avg_logprob, 4),
        "no_speech_prob": round(segment.no_speech_prob, 4),
        "low_confidence": segment.low_confidence,
    }
