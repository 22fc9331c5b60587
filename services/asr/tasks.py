"""The ASR stage: the job's audio blob → a timed transcript, flagged when a human should check it."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any

from services.asr import channels
from services.asr.config import AsrSettings
from services.asr.engines.base import AsrEngine, Confidence, Segment, Transcript
from shared import jobs, languages, metrics, models
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
    channels.diarizer(SETTINGS)  # a configured diarisation engine loads now, not on the first call
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


def work(ctx: StageContext) -> dict[str, Any]:
    settings = ctx.settings if isinstance(ctx.settings, AsrSettings) else (SETTINGS or AsrSettings())
    job = ctx.job
    blob_id = job["inputs"].get("blob_id")
    blob = ctx.blobs.get(blob_id) if blob_id else None
    if blob is None:
        raise StageError("audio_missing", "the job's audio is gone (it expired or was deleted)")
    data = blob[0]
    options = job["options"]
    n_channels = int(job["inputs"].get("channels") or channels.channel_count(data))
    started = time.perf_counter()
    heard = channels.tracks(data, n_channels, settings, options)
    requested = languages.normalize(options.get("language")) or languages.normalize(settings.asr_language)
    asr, language = choose(settings, requested)
    sent = itertools.count()  # partials are numbered in the order they are decoded: channel 0's, then 1's
    try:
        passes = [(track, transcribe(ctx, settings, asr, track, language, sent)) for track in heard]
    except Cancelled:
        return {"cancelled": True}
    # One clock over decoding, comparing the channels and every pass: a two-channel call costs two
    # transcriptions, and its RTF says so.
    elapsed = time.perf_counter() - started
    duration = max(transcript.duration_s for _, transcript in passes)
    if duration:
        metrics.observe(metrics.RTF, elapsed / duration, stage="asr")
    metrics.inc(metrics.AUDIO_SECONDS, duration, stage="asr")  # seconds of recording, not of passes
    jobs.add_cost(ctx.conn, ctx.job_id, audio_s=duration)
    out = result(passes, asr, elapsed)
    channels.label_speakers(out, heard, settings)  # mono: the diarisation engine names the speakers
    out["batched"] = _batch_size(settings, job) > 0
    return out


def _batch_size(settings: AsrSettings, job: dict[str, Any]) -> int:
    """Windows decoded at once: recorded calls go for throughput, live turns for their first words soonest."""
    return settings.asr_batch_size if job.get("priority") == "batch" else 0


def transcribe(ctx: StageContext, settings: AsrSettings, asr: AsrEngine, track: channels.Track, language: str | None,
               sent: Iterator[int]) -> Transcript:
    """One pass over one track, sending each segment as an `asr.partial` event as it is decoded.

    With no language given, each channel detects its own: the two sides of a call are different people
    and need not share a language (an interpreter, a customer answering in their own), and a channel's
    detection costs one encoder pass over its first 30 s of speech, little next to its transcription.
    Detecting once on the louder channel could also pick a channel carrying mostly hold music.
    """
    if ctx.cancelled():
        raise Cancelled
    prompt = ctx.job["options"].get("initial_prompt")
    detected = None
    if language is None and not prompt and settings.asr_language_prompts:
        # The prompt depends on the language, so find it first (one more encoder pass over 30 s).
        detected = asr.detect_language(track.samples, vad=settings.asr_vad)
        language = detected[0] if detected else None
    prompt = prompt or settings.asr_language_prompts.get(language or "")

    def on_segment(segment: Segment) -> None:
        if ctx.cancelled():  # the caller barged in or deleted the job: stop decoding
            raise Cancelled
        index = next(sent)
        if index >= len(ctx.earlier("asr.partial")):  # a re-run does not repeat what listeners already got
            ctx.emit("asr.partial", {"index": index, **_segment_dict(segment, track)})

    transcript = asr.transcribe(track.samples, language=language, beam_size=settings.asr_beam_size,
                                vad=settings.asr_vad, hotwords=_hotwords(ctx.job["options"]),
                                initial_prompt=prompt, on_segment=on_segment,
                                batch_size=_batch_size(settings, ctx.job))
    if detected:
        transcript.language_probability = detected[1]
    return transcript


def _hotwords(options: dict[str, Any]) -> str | None:
    """`hotwords` as a string or a list of words and phrases."""
    hotwords = options.get("hotwords")
    if isinstance(hotwords, list):
        hotwords = " ".join(str(w) for w in hotwords)
    return str(hotwords) if hotwords else None


def result(passes: list[tuple[channels.Track, Transcript]], asr: AsrEngine, elapsed_s: float) -> dict[str, Any]:
    """The stage's result; for a two-channel call, both channels' segments merged in time order."""
    segments = [_segment_dict(s, track) for track, transcript in passes for s in transcript.segments]
    if len(passes) == 1:
        text = passes[0][1].text
    else:
        segments.sort(key=lambda s: s["start"])  # stable: on a tie the left channel comes first
        text = " ".join(s["text"] for s in segments if s["text"])
    # The language of the channel that spoke most stands for the call.
    main = max(passes, key=lambda p: sum(s.end - s.start for s in p[1].segments))[1]
    duration = max(transcript.duration_s for _, transcript in passes)
    out = {
        "text": text,
        "language": main.language,
        "language_probability": round(main.language_probability, 4),
        "duration_s": round(duration, 3),
        "segments": segments,
        # No words at all (silence, noise) is as doubtful as a shaky segment: a human should listen.
        "low_confidence": not text or any(s["low_confidence"] for s in segments),
        "engine": asr.name,
        "model": asr.model,
        "rtf": round(elapsed_s / duration, 4) if duration else 0.0,
        "channels": len(passes),
    }
    if len(passes) > 1:
        out["speakers"] = [track.speaker for track, _ in passes]
        out["channel_languages"] = [transcript.language for _, transcript in passes]
    return out


def _segment_dict(segment: Segment, track: channels.Track) -> dict[str, Any]:
    return {
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text.strip(),
        "avg_logprob": round(segment.avg_logprob, 4),
        "no_speech_prob": round(segment.no_speech_prob, 4),
        "low_confidence": segment.low_confidence,
        "speaker": track.speaker,
        "channel": track.channel,
    }
