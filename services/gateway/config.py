"""Gateway settings (env prefix VQ_)."""

from __future__ import annotations

from pydantic import Field

from shared.config import CommonSettings


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

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
