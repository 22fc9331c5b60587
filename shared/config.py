"""Settings common to every service. Each service extends `CommonSettings` in its own config module.

Every field reads from an environment variable named `VQ_<FIELD>` (or from `.env`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voicequeue"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VQ_", env_file=".env", extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis holding queues, job records, events, blobs and caches.",
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Where assembled model files and built wheels are kept (outside the repo, reused).",
    )
    data_dir: Path = Field(Path("var"), description="Local state: the embedded Redis's AOF and dump.")
    job_ttl_s: int = Field(24 * 3600, description="How long job records and their event streams are kept.")
    blob_ttl_s: int = Field(24 * 3600, description="How long uploaded and synthesized audio is kept.")
    log_level: str = Field("INFO", description="Python logging level.")
    log_json: bool = Field(True, description="Emit one JSON object per log line.")
    debug: bool = Field(False, description="Allow transcripts and reply texts in logs.")

    job_timeout_base_s: float = Field(60.0, description="rq job timeout for a stage with no audio.")
    job_timeout_per_audio_s: float = Field(
        2.0, description="Extra rq timeout per second of input audio (CPU ASR runs about 0.1-0.5x real time)."
    )

    job_timeout_llm_s: float = Field(
        900.0, description="rq job timeout for the llm stage (a reply, or a call analysis of several requests)."
    )

    retry_max_attempts: int = Field(5, description="Attempts per call to an outside API (LLM, edge-tts).")
    retry_total_s: float = Field(30.0, description="Upper bound on the time spent retrying one call.")
    retry_backoff_s: float = Field(0.5, description="First exponential backoff step.")
    retry_backoff_max_s: float = Field(8.0, description="Largest single backoff (and Retry-After honoured).")

    worker_fork: bool = Field(
        False,
        description="Run each job in a forked process (crash isolation, ~15 ms more per job; see "
        "docs/benchmarks.md). ASR ignores it: CTranslate2 and torch are not fork-safe.",
    )
    worker_job_monitoring_interval_s: int = Field(
        5, description="How often a worker heartbeats a running job; bounds how late a dead worker is seen."
    )
    worker_maintenance_interval_s: int = Field(
        15, description="How often workers sweep registries for abandoned jobs (rq default: 10 min)."
    )

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"
