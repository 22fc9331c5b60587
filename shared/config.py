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
    redis_sentinels: str = Field(
        "",
        description="Comma-separated host:port of Redis Sentinels. When set, every client finds the current "
        "primary of redis_sentinel_master through them and follows a failover; redis_url then gives only the "
        "database number and password.",
    )
    redis_sentinel_master: str = Field("voicequeue", description="The primary's name as the Sentinels know it.")
    redis_wait_timeout_ms: int | None = Field(
        None,
        ge=0,
        description="Before answering 202, wait this long for redis_wait_replicas replicas to hold the new job "
        "(Redis WAIT), so it survives the loss of the primary. 0 disables; unset: 500 with Sentinels, else 0.",
    )
    redis_wait_replicas: int = Field(1, ge=1, description="Replicas that must hold a new job before the 202.")
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
        2, description="How often a worker heartbeats a running job; bounds how late a dead worker is seen."
    )
    worker_maintenance_interval_s: int = Field(
        15, description="How often workers run rq's registry maintenance (rq default: 10 min)."
    )
    worker_dead_after_s: int = Field(
        12,
        description="A running job whose worker has not heartbeated for this long is taken for abandoned (its "
        "worker was killed) and requeued. Keep it several monitoring intervals: a false call runs the job twice.",
    )
    worker_reaper_interval_s: float = Field(
        2.0, description="How often each worker looks for abandoned jobs on every stage queue."
    )
    stage_max_attempts: int = Field(
        3, ge=1, description="Times a stage may be started for one job (re-runs after its worker died count); "
        "then the job fails with reason retry_budget_exhausted.",
    )
    stage_max_attempts_per_stage: dict[str, int] = Field(
        default_factory=dict,
        description='Per-stage overrides of stage_max_attempts, as JSON: {"asr": 2, "llm": 3, "tts": 4}.',
    )

    retention_sweep_interval_s: float = Field(
        600.0, description="How often one worker gives Redis keys left without a TTL their retention (0: never).")
    log_redact_pii: bool = Field(True, description="Replace PII (phones, emails, cards, IDs) in every log record, "
                                 "also with debug on.")

    webhook_timeout_s: float = Field(
        5.0, gt=0, description="Seconds a webhook attempt may spend on each of connecting, sending and awaiting "
        "the answer. A delivery job makes one attempt, so this bounds how long a slow receiver holds an llm worker.")
    webhook_max_attempts: int = Field(
        5, ge=1, description="Attempts per webhook delivery (timeouts, connection errors, 408, 429, 5xx are "
        "retried; other 4xx are not); then the delivery is a dead letter the tenant can replay.")
    webhook_retry_first_wait_s: float = Field(
        1.0, ge=0, description="First wait between webhook attempts; it doubles after each, plus up to this "
        "much jitter.")
    webhook_retry_max_wait_s: float = Field(
        30.0, ge=0, description="Longest single wait between webhook attempts, a receiver's Retry-After included. "
        "A waiting delivery holds no worker: it sits in Redis until a worker's reaper re-queues it, up to "
        "worker_reaper_interval_s after it is due.")
    webhook_retention_s: int = Field(
        7 * 24 * 3600, ge=60, description="How long webhook deliveries and dead letters are kept.")
    webhooks_allow_http: bool = Field(
        False, description="Let tenants set webhook endpoints at plain http:// URLs on any host (on-prem "
        "networks); otherwise webhooks use https, or http only to 127.0.0.1/localhost/::1. Deliveries carry call "
        "summaries.")
    tools_allow_http: bool = Field(
        False, description="Let tenants register custom tools at plain http:// URLs on any host (on-prem networks); "
        "otherwise tools use https, or http only to 127.0.0.1/localhost/::1.")
    tools_max_per_tenant: int = Field(32, ge=1, description="Custom tools a tenant may register (POST /v1/tools).")
    egress_allow_private: bool = Field(
        False, description="Let tenants' webhooks and tools reach private, link-local and other internal addresses "
        "(on-prem deployments whose receivers live on the internal network). Off, a webhook or tool URL whose host "
        "is or resolves to one is refused when registered and again when called; loopback is always allowed.")

    @property
    def redis_wait_ms(self) -> int:
        """The WAIT timeout in effect: the setting, else 500 ms with Sentinels and 0 (off) without."""
        if self.redis_wait_timeout_ms is not None:
            return self.redis_wait_timeout_ms
        return 500 if self.redis_sentinels.strip() else 0

    def max_attempts(self, stage: str) -> int:
        """The retry budget of `stage` (a sentence of a streamed reply counts as "tts")."""
        return max(1, int(self.stage_max_attempts_per_stage.get(stage, self.stage_max_attempts)))

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"
