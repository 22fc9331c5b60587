"""How a job wants its reply spoken: voice, engine, speed and language, read once from the job record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.tts.config import TtsSettings
from shared.jobs import Job
from shared.stage import StageError

MIN_SPEED, MAX_SPEED = 0.25, 4.0


@dataclass(frozen=True)
class SpeakOptions:
    voice: str | None
    engine: str | None
    speed: float
    language: str | None


def from_job(job: Job, settings: TtsSettings) -> SpeakOptions:
    options = job.options
    return SpeakOptions(voice=options.voice, engine=options.engine, speed=parse_speed(options.speed, settings),
                        language=job_language(job))


def job_language(job: Job) -> str | None:
    """The language asked for, else the one the LLM answered in, else the one ASR heard (None: guess)."""
    reply, asr = job.reply, job.results.asr
    for value in (job.options.language, reply.language if reply else None, asr.language if asr else None):
        if value:
            return value
    return None


def parse_speed(value: Any, settings: TtsSettings) -> float:
    if value is None:
        return settings.tts_speed
    try:
        speed = float(value)
    except (TypeError, ValueError):
        raise StageError("bad_speed", f"speed must be a number, not {value!r}") from None
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise StageError("bad_speed", f"speed must be between {MIN_SPEED} and {MAX_SPEED}")
    return speed
