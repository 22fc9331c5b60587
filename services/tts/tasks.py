"""The TTS stage: the job's text (the LLM's answer, or the input text) → a WAV (or MP3/Opus) blob.

Sentences are the unit: `run_chunk` speaks each one the LLM streams as soon as
it is written (see `chunks`), and the stage speaks whatever is left, then joins
them all in order into the full reply.
"""

from __future__ import annotations

import logging
from typing import Any

from services.tts import chunks, formats, options, synth
from services.tts.config import TtsSettings
from services.tts.engines.base import Speech
from shared import logs, sentences
from shared.stage import StageContext, StageError, job_connection
from shared.stage import run as run_stage

log = logging.getLogger(__name__)

SETTINGS: TtsSettings | None = None
ENGINES: synth.Engines | None = None


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


def run_chunk(job_id: str, seq: int, text: str) -> None:
    """rq entry point for one sentence of a streamed reply (`shared.queues.enqueue_chunk`)."""
    if ENGINES is None:
        preload()
    assert SETTINGS is not None and ENGINES is not None
    with logs.context(job_id=job_id, stage="tts", seq=int(seq)):
        chunks.produce(job_connection(), SETTINGS, ENGINES, job_id, int(seq), text)


def work(ctx: StageContext, engines: synth.Engines | None = None) -> dict[str, Any]:
    """Speak the reply sentence by sentence (using those already spoken from the queue), then join them."""
    engines = engines or ENGINES
    if engines is None:
        raise RuntimeError("TTS engines not loaded: call services.tts.tasks.preload() first")
    settings = ctx.settings
    if not isinstance(settings, TtsSettings):
        raise TypeError("the TTS stage needs TtsSettings")
    if ctx.cancelled():  # a barge-in: the answer is no longer wanted
        return {"cancelled": True}
    job = ctx.job
    text = job_text(job)
    if len(text) > settings.tts_max_chars:
        raise StageError("text_too_long", f"{len(text)} characters; the limit is {settings.tts_max_chars}")
    fmt = str(job["options"].get("format") or "wav").lower()
    if fmt not in formats.CONTENT_TYPES:
        raise StageError("bad_format", f"unknown format {fmt!r}: use {', '.join(formats.CONTENT_TYPES)}")
    opts = options.from_job(job, settings)
    # A voice, engine or language no sentence could use fails the job before any sentence is tried.
    synth.route(engines, settings, text, language=opts.language, voice=opts.voice, engine=opts.engine)

    done: list[dict[str, Any]] = []
    for seq, sentence in chunk_plan(job):
        chunk = chunks.await_chunk(ctx.conn, settings, engines, job, seq, sentence)
        if chunk is None:
            return {"cancelled": True}
        done.append(chunk)
    spoken = _spoken(done)
    speech = formats.join([_chunk_speech(ctx, c) for c in spoken])
    blob_id = ctx.blobs.put(formats.encode(speech, fmt), formats.CONTENT_TYPES[fmt], settings.blob_ttl_s,
                            tenant=ctx.job["tenant"])

    duration_s = sum(float(c["duration_s"]) for c in spoken)
    synth_s = sum(float(c.get("synth_s") or 0.0) for c in spoken)
    first = spoken[0]
    return {
        "blob_id": blob_id,
        "content_type": formats.CONTENT_TYPES[fmt],
        "format": fmt,
        "duration_s": round(duration_s, 3),
        "sample_rate": formats.output_rate(speech, fmt),
        "engine": first["engine"],
        "voice": first["voice"],
        "language": first["language"],
        "characters": len(text),
        "fallback": next((c["fallback"] for c in spoken if c.get("fallback")), None),
        "synth_s": round(synth_s, 4),
        "rtf": round(synth_s / duration_s, 4),
        "cached_chunks": sum(1 for c in spoken if c.get("cached")),
        "chunks": done,
    }


def chunk_plan(job: dict[str, Any]) -> list[tuple[int, str]]:
    """(seq, sentence) in order: the LLM's streamed chunks, else the text cut the way the LLM would cut it."""
    llm = job["results"].get("llm") or {}
    if "llm" in job["plan"] and llm.get("chunks"):
        return sorted((int(c["seq"]), str(c["text"])) for c in llm["chunks"])
    return [(i, s) for i, s in enumerate(sentences.split(job_text(job))) if s.strip()]


def _spoken(done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sentences with audio. One that failed fails the reply, except one with nothing to pronounce."""
    for chunk in done:
        error = chunk.get("error")
        if error and error["reason"] != "no_speech":
            raise StageError(error["reason"], f"sentence {chunk['seq']}: {error['message']}")
    spoken = [c for c in done if not c.get("error")]
    if not spoken:
        raise StageError("no_speech", "the text produced no audio (nothing pronounceable in it)")
    return spoken


def _chunk_speech(ctx: StageContext, chunk: dict[str, Any]) -> Speech:
    blob = ctx.blobs.get(chunk["blob_id"])
    if blob is None:
        raise StageError("chunk_lost", f"the audio of sentence {chunk['seq']} has expired")
    return formats.read_wav(blob[0])


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
