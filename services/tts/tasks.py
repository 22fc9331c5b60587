"""The TTS stage: the job's text (the LLM's answer, or the input text) → a WAV (or MP3/Opus) blob."""

from __future__ import annotations

import logging
from typing import Any

from services.tts import formats, synth
from services.tts.config import TtsSettings
from shared import metrics
from shared.stage import StageContext, StageError, job_connection
from shared.stage import run as run_stage

log = logging.getLogger(__name__)

SETTINGS: TtsSettings | None = None
ENGINES: synth.Engines | None = None

MIN_SPEED, MAX_SPEED = 0.25, 4.0


def preload(settings: TtsSettings | None = None) -> dict[str, float]:
    """Load piper and espeak-ng once, at worker start (before any fork). Returns load seconds."""
    global SETTINGS, ENGINES
    SETTINGS = settings or TtsSettings()
    ENGINES, seconds = synth.load(SETTINGS)
    return seconds


def run(job_id: str) -> None:
    """rq entry point."""
    if ENGINES is None:
        preload()
    assert SETTINGS is not None
    run_stage("tts", job_id, job_connection(), SETTINGS, work)


def work(ctx: StageContext, engines: synth.Engines | None = None) -> dict[str, Any]:
    engines = engines or ENGINES
    if engines is None:
        raise RuntimeError("TTS engines not loaded: call services.tts.tasks.preload() first")
    settings = ctx.settings
    if not isinstance(settings, TtsSettings):
        raise TypeError("the TTS stage needs TtsSettings")
    if ctx.cancelled():  # a barge-in: the answer is no longer wanted
        return {"cancelled": True}
    job = ctx.job
    options = job["options"]
    text = job_text(job)
    if len(text) > settings.tts_max_chars:
        raise StageError("text_too_long", f"{len(text)} characters; the limit is {settings.tts_max_chars}")
    fmt = str(options.get("format") or "wav").lower()
    if fmt not in formats.CONTENT_TYPES:
        raise StageError("bad_format", f"unknown format {fmt!r}: use {', '.join(formats.CONTENT_TYPES)}")
    speed = _speed(options.get("speed"), settings)
    language = job_language(job)

    result = synth.synthesize(engines, settings, text, language=language, voice=options.get("voice"),
                              engine=options.get("engine"), speed=speed, conn=ctx.conn)
    speech = result.speech
    if speech.duration_s <= 0:
        raise StageError("no_speech", "the text produced no audio (nothing pronounceable in it)")
    blob_id = ctx.blobs.put(formats.encode(speech, fmt), formats.CONTENT_TYPES[fmt], settings.blob_ttl_s)

    rtf = result.seconds / speech.duration_s
    metrics.observe(metrics.RTF, rtf, stage="tts")
    metrics.inc(metrics.AUDIO_SECONDS, speech.duration_s, stage="tts")
    metrics.inc(metrics.TTS_CHARS, len(text), engine=result.engine)
    return {
        "blob_id": blob_id,
        "content_type": formats.CONTENT_TYPES[fmt],
        "format": fmt,
        "duration_s": round(speech.duration_s, 3),
        "sample_rate": formats.output_rate(speech, fmt),
        "engine": result.engine,
        "voice": result.voice,
        "language": result.language,
        "characters": len(text),
        "fallback": result.fallback,
        "synth_s": round(result.seconds, 4),
        "rtf": round(rtf, 4),
    }


def job_text(job: dict[str, Any]) -> str:
    """The LLM's answer when the plan has an LLM stage, else the text the job came with."""
    if "llm" in job["plan"]:
        llm = job["results"].get("llm")
        if not llm:
            raise StageError("missing_input", "the LLM stage left no result to speak")
        text = llm.get("text")
    else:
        text = job["inputs"].get("text")
    if not isinstance(text, str) or not text.strip():
        raise StageError("empty_text", "there is no text to speak")
    return text.strip()


def job_language(job: dict[str, Any]) -> str | None:
    """The language asked for, else the one the LLM answered in, else the one ASR heard (None: guess)."""
    results = job["results"]
    for value in (job["options"].get("language"), (results.get("llm") or {}).get("language"),
                  (results.get("asr") or {}).get("language")):
        if value:
            return str(value)
    return None


def _speed(value: Any, settings: TtsSettings) -> float:
    if value is None:
        return settings.tts_speed
    try:
        speed = float(value)
    except (TypeError, ValueError):
        raise StageError("bad_speed", f"speed must be a number, not {value!r}") from None
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise StageError("bad_speed", f"speed must be between {MIN_SPEED} and {MAX_SPEED}")
    return speed
