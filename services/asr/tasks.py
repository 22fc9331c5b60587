"""The ASR stage: the job's audio blob → a timed transcript, flagged when a human should check it."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from services.asr import channels, diarization, script
from services.asr.config import AsrSettings
from services.asr.diarization.base import Diarizer
from services.asr.engines.base import AsrEngine, Confidence, EncoderWindow, Segment, Transcript
from shared import jobs, languages, metrics, models
from shared.jobs import AsrResult, Job, Options
from shared.stage import StageContext, StageError

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """The job was cancelled while its audio was being transcribed."""


@dataclass
class Resources:
    """What the ASR worker loads once: an engine per whisper model (English, multilingual), the diarizer."""

    settings: AsrSettings
    engines: dict[str, AsrEngine]
    diarizer: Diarizer
    load_seconds: dict[str, float]

    def engine(self, model: str) -> AsrEngine:
        return self.engines[model]


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


def load(settings: AsrSettings) -> Resources:
    """The English and the multilingual model, loaded, and the configured diarisation engine."""
    engines: dict[str, AsrEngine] = {}
    seconds: dict[str, float] = {}
    for model in dict.fromkeys((settings.asr_model, settings.asr_multilingual_model)):
        engines[model] = make_engine(settings, model)
        seconds[model] = engines[model].load(None)
    return Resources(settings, engines, diarization.make(settings), seconds)


def choose(resources: Resources, language: str | None) -> tuple[AsrEngine, str | None]:
    """The engine for a language, and the language to ask it for (None: let it detect)."""
    primary = resources.engine(resources.settings.asr_model)
    if language not in (None, "en") and not primary.multilingual:
        primary = resources.engine(resources.settings.asr_multilingual_model)
    if language is None and not primary.multilingual:
        language = "en"
    if language is not None and language not in primary.languages:
        raise StageError("unsupported_language", f"language {language!r} is not one whisper ({primary.model}) "
                                                 "can transcribe")
    return primary, language


def work(ctx: StageContext[Resources]) -> AsrResult:
    settings = ctx.resources.settings
    job = ctx.job
    blob_id = job.inputs.blob_id
    blob = ctx.blobs.get(blob_id) if blob_id else None
    if blob is None:
        raise StageError("audio_missing", "the job's audio is gone (it expired or was deleted)")
    data = blob[0]
    options = job.options
    n_channels = int(job.inputs.channels or channels.channel_count(data))
    started = time.perf_counter()
    heard = channels.tracks(data, n_channels, settings, options)
    requested = languages.normalize(options.language) or languages.normalize(settings.asr_language)
    asr, language = choose(ctx.resources, requested)
    sent = itertools.count()  # partials are numbered in the order they are decoded: channel 0's, then 1's
    try:
        passes = [(track, transcribe(ctx, settings, asr, track, language, sent)) for track in heard]
    except Cancelled:
        return AsrResult(cancelled=True)
    # One clock over decoding, comparing the channels and every pass: a two-channel call costs two
    # transcriptions, and its RTF says so.
    elapsed = time.perf_counter() - started
    duration = max(transcript.duration_s for _, transcript in passes)
    if duration:
        metrics.observe(metrics.RTF, elapsed / duration, stage="asr")
    metrics.inc(metrics.AUDIO_SECONDS, duration, stage="asr")  # seconds of recording, not of passes
    jobs.add_cost(ctx.conn, ctx.job_id, audio_s=duration)
    out = result(passes, asr, elapsed)
    channels.label_speakers(out, heard, ctx.resources.diarizer)  # mono: the diarisation engine names the speakers
    out["batched"] = _batch_size(settings, job) > 0
    return AsrResult.model_validate(out)


def _batch_size(settings: AsrSettings, job: Job) -> int:
    """Windows decoded at once: recorded calls go for throughput, live turns for their first words soonest."""
    return settings.asr_batch_size if job.priority == "batch" else 0


def _window(settings: AsrSettings, job: Job) -> EncoderWindow | None:
    """A live call's piece is a few seconds our endpointer cut: its encoder window is trimmed. Anything else is
    decoded exactly as raw faster-whisper would (the quality bar for files and turns)."""
    if job.options.call_id is None or job.kind != "transcription" or settings.asr_call_encoder_window_s >= 30:
        return None
    return EncoderWindow(settings.asr_call_encoder_window_s, settings.asr_call_encoder_margin_s)


def transcribe(ctx: StageContext[Resources], settings: AsrSettings, asr: AsrEngine, track: channels.Track,
               language: str | None, sent: Iterator[int]) -> Transcript:
    """One pass over one track, sending each segment as an `asr.partial` event as it is decoded.

    With no language given, each channel detects its own: the two sides of a call are different people
    and need not share a language (an interpreter, a customer answering in their own), and a channel's
    detection costs one encoder pass over its first 30 s of speech, little next to its transcription.
    Detecting once on the louder channel could also pick a channel carrying mostly hold music.
    """
    if ctx.cancelled():
        raise Cancelled
    prompt = ctx.job.options.initial_prompt
    detected = None
    if language is None and not prompt and (settings.asr_language_prompts or settings.asr_language_beam_sizes):
        # The prompt and beam depend on the language, so find it first (one more encoder pass over 30 s).
        detected = asr.detect_language(track.samples, vad=settings.asr_vad)
        language = detected[0] if detected else None
    prompt = prompt or settings.asr_language_prompts.get(language or "")
    asked = ctx.job.options.language or settings.asr_language  # as given: zh-TW keeps its region

    def on_segment(segment: Segment) -> None:
        if ctx.cancelled():  # the caller barged in or deleted the job: stop decoding
            raise Cancelled
        # An undetected language shows in the text: Han characters without kana are Chinese.
        heard = language or ("zh" if languages.written_in_chinese(segment.text) else None)
        segment.text = script.convert(segment.text, script.conversion(asked, heard, settings.asr_zh_script))
        index = next(sent)
        if index >= len(ctx.earlier("asr.partial")):  # a re-run does not repeat what listeners already got
            ctx.emit("asr.partial", {"index": index, **_segment_dict(segment, track)})

    transcript = asr.transcribe(track.samples, language=language, beam_size=beam_size(settings, language),
                                vad=settings.asr_vad, hotwords=_hotwords(ctx.job.options),
                                initial_prompt=prompt, on_segment=on_segment,
                                batch_size=_batch_size(settings, ctx.job), window=_window(settings, ctx.job))
    if detected:
        transcript.language_probability = detected[1]
    return script.apply(transcript, script.conversion(asked, transcript.language, settings.asr_zh_script))


def beam_size(settings: AsrSettings, language: str | None) -> int:
    return settings.asr_language_beam_sizes.get(language or "", settings.asr_beam_size)


def _hotwords(options: Options) -> str | None:
    """`hotwords` as a string or a list of words and phrases."""
    hotwords = options.hotwords
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
        "encoder_window_s": max((t.encoder_window_s for _, t in passes if t.encoder_window_s), default=None),
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
