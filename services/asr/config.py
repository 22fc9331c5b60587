"""Settings of the ASR worker (env vars `VQ_ASR_*`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import Field, field_validator

from shared import cpu
from shared.config import CommonSettings

Priority = Literal["live", "batch"]
PRIORITIES: tuple[Priority, ...] = ("live", "batch")  # as in shared.queues, live first
# The engines services/asr/diarization registers (a test keeps both in step). Named here, so that reading the
# settings refuses an unknown engine without importing the registry, which itself imports these settings.
DIARIZATION_ENGINES = ("none",)


def _default_threads(priorities: Iterable[str]) -> int:
    budget = cpu.budget()
    return budget.asr_batch if set(priorities) == {"batch"} else budget.asr


class AsrSettings(CommonSettings):
    asr_engine: Literal["faster-whisper", "openai-whisper"] = Field(
        "faster-whisper",
        description='"faster-whisper" (CTranslate2, default) or "openai-whisper" (PyTorch, running the same '
        "weights converted from the CTranslate2 model; slower, mainly a cross-check).",
    )
    asr_model: str = Field(
        "tiny.en",
        description='Whisper model for English and for jobs with no language: "tiny.en", "base", or a '
        "CTranslate2 model directory.",
    )
    asr_multilingual_model: str = Field(
        "base",
        description="Model used when a job asks for a language other than English and asr_model is "
        "English-only (tiny.en is).",
    )
    asr_compute_type: str = Field(
        "int8",
        description='CTranslate2 compute type for faster-whisper: "int8" (fastest on CPU), "float32", '
        '"int8_float32", … (openai-whisper always computes in float32).',
    )
    asr_beam_size: int = Field(5, ge=1, description="Beam width; 1 means greedy decoding.")
    asr_language: str | None = Field(
        None,
        description="Language assumed when a job gives none (ISO code such as en or zh). Unset: English "
        "with an English-only model, otherwise detected from the first 30 s.",
    )
    asr_call_encoder_window_s: float = Field(
        15.0,
        ge=1.0,
        le=30.0,
        description="For a live call's pieces (audio the call's own endpointer cut, a few seconds each), "
        "faster-whisper's encoder sees the speech plus asr_call_encoder_margin_s, but at least this many seconds, "
        "instead of always 30 s: about 0.58x the decode time, with the same WER on the repository's clips "
        "(bench/encoder_window.py, docs/benchmarks.md). 30 turns the trim off. Files and turns are always "
        "decoded with whisper's own 30 s window, so their transcripts stay exactly raw faster-whisper's.",
    )
    asr_call_encoder_margin_s: float = Field(
        5.0, ge=0.0, le=30.0,
        description="Seconds of padding kept after a call piece's speech when the encoder window is trimmed. "
        "With 1 s and no floor, whisper tiny.en repeated or dropped words on short clips.",
    )
    asr_vad: bool = Field(
        True, description="Skip non-speech with the Silero VAD bundled in faster-whisper (works offline)."
    )
    asr_low_conf_logprob: float = Field(
        -1.0, description="A segment whose average token log-probability is below this is flagged for review."
    )
    asr_low_conf_no_speech: float = Field(
        0.6, description="A segment whose no-speech probability is above this is flagged for review."
    )
    asr_language_prompts: dict[str, str] = Field(
        default_factory=dict,
        description="Initial prompt per language when the job gives none (JSON in VQ_ASR_LANGUAGE_PROMPTS). "
        "None by default: for Mandarin, the simplified-Chinese prompt 以下是普通话的句子，使用简体中文。 measured "
        "CER 0.134 (greedy) and 0.151 (beam 5) after t2s on the zh clips, against 0.081 without it (asr_zh_script "
        "does the script; bench/mandarin.py, docs/benchmarks.md).",
    )
    asr_language_beam_sizes: dict[str, int] = Field(
        default_factory=lambda: {"zh": 1},
        description="Beam width per language, overriding asr_beam_size (JSON in VQ_ASR_LANGUAGE_BEAM_SIZES). "
        "Mandarin decodes greedily: with VAD and t2s, whisper base measured CER 0.081 greedy against 0.116 with "
        "beam 5 on the zh clips (bench/mandarin.py), and greedy is the faster.",
    )
    asr_zh_script: Literal["simplified", "traditional", "as-is"] = Field(
        "simplified",
        description='Script of Mandarin transcripts when the job asks for plain "zh" or none (detected): '
        '"simplified" (OpenCC t2s), "traditional" (s2t) or "as-is" (whisper\'s own mix). zh-CN always gets '
        "Simplified and zh-TW / zh-HK / zh-Hant Traditional, whatever this says.",
    )
    asr_channel_speakers: list[str] = Field(
        default_factory=lambda: ["agent", "customer"],
        min_length=2,
        max_length=2,
        description="Speaker names for the left and right channel of a two-channel call (JSON in "
        "VQ_ASR_CHANNEL_SPEAKERS); a job's `channel_speakers` option overrides them.",
    )
    asr_mono_correlation: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="Two channels whose correlation (in absolute value) reaches this carry one signal and are "
        "transcribed once, as mono. Measured: 0.9996 for jfk.flac and 0.998 for an MP3 of one voice on both "
        "channels, against 0.00 and -0.01 for calls with a different talker on each channel; at 0.9 the "
        "channels share over 90% of their energy, so transcribing each would repeat the same words.",
    )
    asr_batch_size: int = Field(
        8,
        ge=0,
        description="Batch-priority jobs (recorded calls) are cut at VAD pauses into windows of up to 30 s, "
        "decoded this many at a time by faster-whisper's BatchedInferencePipeline (measured 1.2-1.5x the "
        "sequential throughput on 2 cores). 0: decode them sequentially like live turns. Live turns always "
        "decode sequentially, their first words soonest.",
    )
    asr_worker_priorities: list[Priority] = Field(
        default_factory=lambda: list(PRIORITIES),
        min_length=1,
        description='Queues this ASR worker takes jobs from, in order (JSON in VQ_ASR_WORKER_PRIORITIES). '
        'An in-process worker busy with a long recording cannot take a live turn until it finishes, so a '
        'deployment that mixes the two runs one worker with ["live"] beside workers with ["batch"] (or '
        '["live", "batch"]).',
    )
    asr_cpu_threads: int = Field(
        default_factory=lambda data: _default_threads(data.get("asr_worker_priorities", PRIORITIES)), ge=1,
        description="Threads one transcription may use. Default, from the CPU budget (shared/cpu.py): every "
        "core this process may use (a caller waits for the whole transcription); a [\"batch\"]-only worker "
        "runs niced, so it takes only what live work leaves idle.",
    )
    asr_worker_nice: int = Field(
        0,
        ge=0,
        le=19,
        description="Niceness the ASR worker process takes on at start (0 to 19). Batch workers set 19, so "
        "that when they share the CPU with a live worker the kernel runs the live turn first.",
    )
    asr_diarization: str = Field(
        "none",
        description='Diarisation engine that names the speakers of a mono recording (two-channel calls are '
        'named by channel). "none" (default): one speaker, labelled asr_mono_speaker. Engines are listed in '
        "services/asr/diarization/__init__.py; an unknown name stops the worker at start.",
    )
    asr_mono_speaker: str | None = Field(
        None,
        description='Speaker label the "none" diarisation engine puts on every segment of a mono recording. '
        "Unset (default): no label, so subtitles carry no name and the call analysis asks the model to tell "
        "the talkers apart from what they say.",
    )
    asr_metrics_port: int = Field(9101, description="Port of the ASR worker's /metrics endpoint.")

    @field_validator("asr_diarization")
    @classmethod
    def _known_diarizer(cls, name: str) -> str:
        if name not in DIARIZATION_ENGINES:
            known = ", ".join(sorted(DIARIZATION_ENGINES))
            raise ValueError(f"unknown diarisation engine {name!r}; known engines: {known}")
        return name
