"""Gateway settings (env prefix VQ_)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

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
        default_factory=lambda: ["en_US-joe-medium", "zf_xiaoyi", "zf_xiaoxiao", "zf_xiaobei", "zm_yunjian",
                                 "zm_yunxi", "zm_yunxia", "zm_yunyang", "zf_xiaoni", "jm_kumo", "jf_nezumi",
                                 "jf_alpha", "jf_gongitsune", "jf_tebukuro"],
        description="Local (piper, Kokoro) voice names requests may ask for (JSON list in VQ_GATEWAY_VOICES). Edge "
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
        200, description="Jobs a live queue may hold; a submission that would go past it gets 429 (work that "
        "would not finish in time). Checked and enqueued in one Redis transaction."
    )
    max_queue_depth_batch: int = Field(
        5000, description="Jobs asr:batch may hold before new batch submissions get 429."
    )
    queue_full_retry_after_s: int = Field(
        5, description="Run time assumed per queued job for a queue-full 429's Retry-After while no recent run "
        "times of that queue are known (otherwise: their median x jobs over the limit / workers on the queue)."
    )
    queue_full_retry_after_max_s: int = Field(600, description="Largest Retry-After a queue-full 429 sends.")
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

    # Live calls (services/gateway/calls/): /v1/realtime and /v1/telephony/twilio.
    call_idle_timeout_s: float = Field(
        60.0, description="A call with no speech from the caller for this long gets a spoken goodbye and is closed "
        "(a session's turn_detection.idle_timeout_ms overrides it)."
    )
    call_max_duration_s: float = Field(1800.0, description="Longest call; then a spoken goodbye and the socket closes.")
    call_history_turns: int = Field(20, description="Exchanges of the call's history passed to the LLM with each turn.")
    call_transfer_to: str = Field(
        "", description="Where `transfer_to_human` sends a caller: a phone number (+E.164) or SIP URI to dial, or "
        "queue:<name> for a Twilio queue. Sent in the `call.transfer` event and webhook; Twilio calls are dialled "
        "there by the <Connect action> TwiML (docs/calls.md). Empty: the event and webhook only.")
    call_greeting: str | None = Field(
        None, description="Spoken when a call opens (none: the bot waits for the caller).")
    call_idle_goodbye: str = Field(
        "I have not heard anything for a while, so I will end the call now. Goodbye.",
        description="Spoken before an idle call is closed.")
    call_limit_goodbye: str = Field(
        "We have reached the time limit for this call. Thank you for calling. Goodbye.",
        description="Spoken before a call that reached call_max_duration_s is closed.")
    call_min_speech_ms: int = Field(
        200, description="Sound shorter than this is a false start (a cough, a click): it neither starts a turn nor "
        "interrupts the bot. Keep it under ~250 ms or speech_started comes late.")
    call_asr_piece_min_s: float = Field(
        1.0, description="While the caller speaks, audio is sent to ASR in pieces cut at short pauses once a piece "
        "is this long, so little or nothing is left to transcribe when the silence window ends their turn.")
    call_asr_pause_ms: int = Field(200, description="A pause this long inside speech is where a piece may be cut.")
    call_eager_reply: bool = Field(
        True, description="At such a pause, transcribe what is left and start the reply before the silence window "
        "ends the turn; it is sent only if the turn ends at that pause with the same words, and is cancelled if the "
        "caller goes on. Measured: voice-to-voice 0.80-0.87x the raw-engine sum with it, 0.95x without "
        "(docs/calls.md). "
        "The cost is ASR and LLM work at every pause, and prompt tokens billed for each dropped reply on a paid LLM "
        "API. It backs off under load (VQ_CALL_EAGER_MAX_BACKLOG).")
    call_eager_max_backlog: int = Field(
        0, ge=0, description="An eager reply starts only while the live ASR and LLM queues hold at most this "
        "many jobs waiting for a worker: under load, speculative work would delay other callers' real turns.")
    call_step_timeout_s: float = Field(
        120.0, description="How long a call waits for the next event of a transcription or reply job before giving "
        "up on it (the job's whole run may take longer).")
    call_max_per_tenant: int = Field(
        10, description="Concurrent calls a tenant may hold; one more is refused with a close reason (0: no cap).")
    call_slot_wait_s: float = Field(
        2.0, ge=0, description="How long a call over its tenant's cap waits for a slot before it is refused: a "
        "caller who hangs up and calls again at once may find the last call still ending.")
    call_voice: str | None = Field(None, description="TTS voice for calls (none: the TTS worker's default).")
    call_audiosocket_port: int | None = Field(
        None, description="TCP port of the Asterisk AudioSocket listener the gateway opens (none: no listener). "
        "AudioSocket has no authentication: bind it where only Asterisk can reach it.")
    call_audiosocket_tenant: str = Field(
        "public", description="Tenant that AudioSocket calls belong to (their records, limits and cost).")
    call_max_instructions_chars: int = Field(
        8000, description="Longest `instructions` a call's session.update may set (they go into every LLM request "
        "of the call, on top of the LLM worker's system prompt).")
    call_shutdown_timeout_s: float = Field(
        5.0, description="On SIGTERM the gateway ends its open calls (reason gateway_shutdown: pending work cancelled, "
        "an error event and close code 1012 sent) and waits this long for them to close before stopping.")
    twilio_auth_token: SecretStr | None = Field(
        None, description="Twilio account auth token. When set, /v1/telephony/twilio accepts only upgrades whose "
        "X-Twilio-Signature (HMAC-SHA1 of the stream URL keyed with this token) matches. Never logged.")
    twilio_stream_url: str | None = Field(
        None, description="The wss:// URL given to Twilio in <Stream url=…>, as Twilio signs it (without the query). "
        "None: taken from the request's Host header, as wss:// and ws://; set it behind a proxy that rewrites them.")
    twilio_tenant: str = Field(
        "public", description="Tenant that Twilio calls belong to when they are authenticated by their signature "
        "(twilio_auth_token set); without a token the API key decides.")
    call_ws_max_message_mb: float = Field(
        24.0, description="Largest WebSocket message the gateway reads. Above the protocol's 15 MiB of audio per "
        "append (20 MiB as base64), so an oversized append gets an error event instead of a dropped socket.")

    # Knowledge base (services/gateway/routes/knowledge.py).
    knowledge_max_document_mb: float = Field(
        10.0, description="Largest document POST /v1/knowledge/documents accepts (413 past it).")
    knowledge_max_documents: int = Field(
        2000, description="Documents one tenant's knowledge base may hold (409 past it).")

    @property
    def knowledge_max_document_bytes(self) -> int:
        return int(self.knowledge_max_document_mb * 1024 * 1024)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def ws_max_size_bytes(self) -> int:
        return int(self.call_ws_max_message_mb * 1024 * 1024)

    @property
    def batch_max_file_bytes(self) -> int:
        return int(self.batch_max_file_mb * 1024 * 1024)
