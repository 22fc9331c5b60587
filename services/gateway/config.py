"""Gateway settings (env prefix VQ_)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.config import CommonSettings


class TenantRate(BaseModel):
    """A tenant's own submission rate (VQ_RATE_LIMIT_OVERRIDES)."""

    per_s: float = Field(description="Submissions per second on average (0 = no limit).")
    burst: int = Field(description="Submissions at once.")


class GatewaySettings(CommonSettings):
    gateway_host: str = Field("127.0.0.1", description="Interface the HTTP server binds to.")
    gateway_port: int = Field(8000, description="HTTP port of the gateway.")
    gateway_public_url: str | None = Field(
        None, description="Base URL put in links (status_url, events_url…); default: from the request."
    )
    max_upload_mb: float = Field(25.0, description="Largest accepted upload (413 past it), as OpenAI's audio API.")
    max_turn_audio_s: float = Field(15 * 60, description="Longest audio for a live turn or transcription (422).")
    transcription_wait_s: float = Field(
        600.0, description="How long POST /v1/audio/transcriptions waits for its job before answering 504."
    )
    sse_keepalive_s: float = Field(15.0, description="Comment sent on an idle SSE stream to keep proxies open.")
    chat_max_chars: int = Field(2000, description="Longest text POST /v1/chat accepts (400 past it).")
    speech_max_chars: int = Field(4096, description="Longest input POST /v1/audio/speech accepts, as OpenAI's.")
    reply_wait_s: float = Field(
        300.0, description="How long POST /v1/audio/speech and POST /v1/turns?wait=true wait before answering 504."
    )
    stream_first_chunk_wait_s: float = Field(
        300.0, description="How long GET /v1/jobs/{id}/audio/stream waits for the first audio chunk (504 after)."
    )
    batch_max_audio_s: float = Field(
        2 * 3600, description="Longest recording a batch accepts; longer calls are recorded as failed (too_long)."
    )
    batch_max_files: int = Field(1000, description="Most calls one batch may hold (413 past it).")
    gateway_voices: list[str] = Field(
        default_factory=lambda: ["en_US-joe-medium"],
        description="Local (piper) voice names requests may ask for (JSON list in VQ_GATEWAY_VOICES). Edge "
        "voices (xx-YY-NameNeural) and espeak-ng voices are accepted too; anything else is refused (400).",
    )

    auth_required: bool = Field(
        False, description="Refuse requests without a valid API key even before any key exists (compose turns it "
        "on). Otherwise auth switches on with the first `voicequeue keys create`.",
    )

    # Limits and backpressure (services/gateway/limits.py, services/gateway/idempotency.py).
    json_max_request_mb: float = Field(
        1.0, description="Largest JSON request body (POST /v1/chat, /v1/audio/speech, JSON batches); 413 past it, "
        "counted while the body streams in."
    )
    upload_form_slack_mb: float = Field(
        1.0, description="Multipart overhead allowed on top of max_upload_mb before an upload is cut off (413)."
    )
    batch_max_request_mb: float = Field(
        2048.0, description="Largest multipart request to POST /v1/batches and /v1/batches/{id}/files (413 past it)."
    )
    batch_max_file_mb: float = Field(512.0, description="Largest single recording in a batch (a 2 h WAV is ~230 MB).")
    rate_limit_per_s: float = Field(
        20.0, description="Submissions a tenant may make per second on average (token bucket in Redis; 0 = no "
        "limit). Over it: 429 with Retry-After."
    )
    rate_limit_burst: int = Field(60, description="Submissions a tenant may make at once before the rate applies.")
    rate_limit_read_per_s: float = Field(
        200.0, description="Reads (GET/DELETE under /v1) a tenant may make per second, in a bucket of their own "
        "(0 = no limit)."
    )
    rate_limit_read_burst: int = Field(400, description="Reads a tenant may make at once before the read rate applies.")
    rate_limit_overrides: dict[str, TenantRate] = Field(
        {}, description='Per-tenant submission limits, JSON: {"acme": {"per_s": 100, "burst": 300}}.'
    )
    max_queue_depth_live: int = Field(
        200, description="Jobs a live queue may hold before new submissions to it get 429 (work that would not "
        "finish in time)."
    )
    max_queue_depth_batch: int = Field(
        5000, description="Jobs asr:batch may hold before new batch submissions get 429."
    )
    queue_full_retry_after_s: int = Field(5, description="Retry-After sent with a queue-full 429.")
    max_streams_per_tenant: int = Field(
        20, description="Open SSE and audio streams a tenant may hold at once (429 past it)."
    )
    stream_slot_ttl_s: int = Field(
        60, description="A stream slot not refreshed for this long is freed (a gateway that died leaks none)."
    )
    idempotency_ttl_s: int = Field(
        24 * 3600, description="How long an Idempotency-Key replays its original response."
    )
    idempotency_wait_s: float = Field(
        5.0, description="How long a request waits for a concurrent one with the same Idempotency-Key before 409."
    )
    idempotency_max_body_kb: int = Field(
        1024, description="Largest JSON answer kept for replay; larger ones and audio replay the current state "
        "of the job or batch."
    )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def batch_max_file_bytes(self) -> int:
        return int(self.batch_max_file_mb * 1024 * 1024)
