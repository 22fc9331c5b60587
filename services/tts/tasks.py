"""The TTS stage: the job's text (the LLM's answer, or the input text) → a WAV (or MP3/Opus) blob.

Sentences are the unit: `run_chunk` speaks each one the LLM streams as soon as
it is written (see `chunks`), and the stage speaks whatever is left, then joins
them all in order into the full reply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from services.tts import claims, formats, options, synth
from services.tts.config import TtsSettings
from services.tts.engines.base import Speech
from shared import logs, sentences
from shared.jobs import Chunk, Job, TtsResult
from shared.stage import StageContext, StageError

log = logging.getLogger(__name__)


@dataclass
class Resources:
    """What the TTS worker loads once: piper, Kokoro and espeak-ng (edge-tts needs nothing loaded)."""

    settings: TtsSettings
    engines: synth.Engines
    load_seconds: dict[str, float]


def load(settings: TtsSettings) -> Resources:
    # A forking worker must hold every model before its first fork; one that runs jobs in-process serves
    # English while Kokoro loads.
    engines, seconds = synth.load(settings, background=not settings.worker_fork)
    return Resources(settings, engines, seconds)


def speak_sentence(conn: redis.Redis, settings: TtsSettings, resources: Resources, job_id: str, seq: int,
                   text: str) -> None:
    """One sentence of a streamed reply, from the queue (`shared.queues.enqueue_chunk`)."""
    with logs.context(job_id=job_id, stage="tts", seq=int(seq)):
        claims.produce(conn, settings, resources.engines, job_id, int(seq), text)


def work(ctx: StageContext[Resources]) -> TtsResult:
    """Speak the reply sentence by sentence (using those already spoken from the queue), then join them."""
    settings, engines = ctx.resources.settings, ctx.resources.engines
    if ctx.cancelled():  # a barge-in: the answer is no longer wanted
        return TtsResult(cancelled=True)
    job = ctx.job
    text = job_text(job)
    if len(text) > settings.tts_max_chars:
        raise StageError("text_too_long", f"{len(text)} characters; the limit is {settings.tts_max_chars}")
    fmt = (job.options.format or "wav").lower()
    if fmt not in formats.CONTENT_TYPES:
        raise StageError("bad_format", f"unknown format {fmt!r}: use {', '.join(formats.CONTENT_TYPES)}")
    opts = options.from_job(job, settings)
    # A voice, engine or language no sentence could use fails the job before any sentence is tried.
    synth.route(engines, settings, text, language=opts.language, voice=opts.voice, engine=opts.engine)

    done: list[Chunk] = []
    for seq, sentence in chunk_plan(job):
        chunk = claims.await_chunk(ctx.conn, settings, engines, job, seq, sentence)
        if chunk is None:
            return TtsResult(cancelled=True)
        done.append(chunk)
    spoken = _spoken(done)
    speech = formats.join([_chunk_speech(ctx, c) for c in spoken])
    blob_id = ctx.blobs.put(formats.encode(speech, fmt), formats.CONTENT_TYPES[fmt], settings.blob_ttl_s,
                            tenant=job.tenant)

    duration_s = sum(c.duration_s for c in spoken)
    synth_s = sum(c.synth_s or 0.0 for c in spoken)
    first = spoken[0]
    return TtsResult(
        blob_id=blob_id,
        content_type=formats.CONTENT_TYPES[fmt],
        format=fmt,
        duration_s=round(duration_s, 3),
        sample_rate=formats.output_rate(speech, fmt),
        engine=first.engine,
        voice=first.voice,
        language=first.language,
        characters=len(text),
        fallback=next((c.fallback for c in spoken if c.fallback), None),
        synth_s=round(synth_s, 4),
        rtf=round(synth_s / duration_s, 4),
        cached_chunks=sum(1 for c in spoken if c.cached),
        chunks=done,
    )


def chunk_plan(job: Job) -> list[tuple[int, str]]:
    """(seq, sentence) in order: the LLM's streamed chunks, else the text cut the way the LLM would cut it."""
    reply = job.reply
    if "llm" in job.plan and reply is not None and reply.chunks:
        return sorted((c.seq, c.text) for c in reply.chunks)
    return [(i, s) for i, s in enumerate(sentences.split(job_text(job))) if s.strip()]


def _spoken(done: list[Chunk]) -> list[Chunk]:
    """The sentences with audio. One that failed fails the reply, except one with nothing to pronounce."""
    for chunk in done:
        if chunk.error is not None and chunk.error.reason != "no_speech":
            raise StageError(chunk.error.reason, f"sentence {chunk.seq}: {chunk.error.message}")
    spoken = [c for c in done if c.error is None]
    if not spoken:
        raise StageError("no_speech", "the text produced no audio (nothing pronounceable in it)")
    return spoken


def _chunk_speech(ctx: StageContext[Resources], chunk: Chunk) -> Speech:
    blob = ctx.blobs.get(chunk.blob_id) if chunk.blob_id else None
    if blob is None:
        raise StageError("chunk_lost", f"the audio of sentence {chunk.seq} has expired")
    return formats.read_wav(blob[0])


def job_text(job: Job) -> str:
    """The LLM's answer when the plan has an LLM stage, else the text the job came with."""
    if "llm" in job.plan:
        reply = job.reply
        if reply is None:
            raise StageError("missing_input", "the LLM stage left no result to speak")
        text: str | None = reply.text
    else:
        text = job.inputs.text
    if not isinstance(text, str) or not text.strip():
        raise StageError("empty_text", "there is no text to speak")
    return text.strip()
