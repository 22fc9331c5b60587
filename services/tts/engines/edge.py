"""edge-tts: Microsoft's online neural voices (MP3 over a WebSocket), decoded to 24 kHz PCM.

Every call goes through `shared.retry`: 429/5xx, timeouts and dropped
connections are retried; an unresolvable host is not (it will not resolve in
the next few seconds, and the caller has a local engine to fall back on).

The text sent is not PII-redacted: it is the reply the caller hears, and a
redacted reply would read "[PHONE]" to them instead of the number they must
note down. PII the caller gave never reaches an outside LLM (`llm_redact_pii`),
so a reply written there cannot repeat it; deployments that must not send any
reply text to Microsoft keep edge voices off and speak with piper/espeak-ng.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import edge_tts
import edge_tts.communicate
import edge_tts.constants
from edge_tts.exceptions import EdgeTTSException, WebSocketError

from services.tts.config import TtsSettings
from services.tts.engines.base import Speech, base_language, to_int16
from shared import audio, retry
from shared.retry import Retryable, UpstreamError

SAMPLE_RATE = 24000  # edge-tts asks for audio-24khz-48kbitrate-mono-mp3
SERVICE = "edge-tts"
DEFAULT_URL = edge_tts.constants.WSS_URL
# The short form edge-tts accepts: "zh-CN-XiaoxiaoNeural", "en-US-AriaNeural".
VOICE_NAME = re.compile(r"^([a-z]{2,})-([A-Z]{2,})-(.+Neural)$")


def is_edge_voice(voice: str | None) -> bool:
    return bool(voice and VOICE_NAME.match(voice))


def voice_language(voice: str) -> str | None:
    match = VOICE_NAME.match(voice)
    return match.group(1) if match else None


def classify(exc: BaseException) -> Retryable | UpstreamError | None:
    """shared.retry's verdict on an edge-tts failure."""
    if isinstance(exc, aiohttp.ClientResponseError):  # includes a refused WebSocket upgrade (429, 503, ...)
        verdict = retry.classify_http_status(exc.status, exc.headers)
        return verdict or UpstreamError("upstream_error", f"edge-tts handshake failed: HTTP {exc.status}")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return UpstreamError("upstream_unavailable", f"cannot resolve the edge-tts host ({exc.host})")
    if isinstance(exc, TimeoutError):  # also aiohttp.ServerTimeoutError
        return Retryable("timeout", "edge-tts did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectionError | WebSocketError):
        return Retryable("connection", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, EdgeTTSException | aiohttp.ClientError):
        return UpstreamError("upstream_error", f"edge-tts failed: {type(exc).__name__}: {exc}")
    return None


class EdgeEngine:
    name = "edge"

    def __init__(self, settings: TtsSettings) -> None:
        self.settings = settings
        self.retry_settings = settings.model_copy(
            update={"retry_total_s": min(settings.retry_total_s, settings.tts_edge_retry_total_s)})
        self.voices = {k.lower(): v for k, v in settings.tts_edge_voices.items()}
        self.url = settings.tts_edge_url or DEFAULT_URL
        if "?" not in self.url:
            raise ValueError("tts_edge_url needs a query string (edge-tts appends '&ConnectionId=...')")
        self.sample_rate = SAMPLE_RATE

    def supports(self, language: str | None) -> bool:
        return (base_language(language) or "en") in self.voices

    def voice_for(self, voice: str | None, language: str | None) -> str:
        if voice and is_edge_voice(voice):
            return voice
        base = base_language(language) or "en"
        if base not in self.voices:
            raise ValueError(f"no edge-tts voice configured for language {base!r}")
        return self.voices[base]

    def synthesize(self, text: str, *, voice: str | None = None, language: str | None = None,
                   speed: float = 1.0) -> Speech:
        name = self.voice_for(voice, language)
        rate = f"{round((speed - 1.0) * 100):+d}%"
        mp3 = retry.call(lambda: asyncio.run(self._fetch(text, name, rate)), service=SERVICE,
                         settings=self.retry_settings, classify=classify)
        pcm = audio.decode(mp3, sample_rate=SAMPLE_RATE)
        return Speech(to_int16(pcm), SAMPLE_RATE)

    async def _fetch(self, text: str, voice: str, rate: str) -> bytes:
        # edge-tts has no endpoint parameter; it reads this module global on each connection.
        setattr(edge_tts.communicate, "WSS_URL", self.url)  # noqa: B010  (not in its typed exports)
        timeout = self.settings.tts_edge_timeout_s
        seconds = max(1, round(timeout))
        communicate = edge_tts.Communicate(text, voice, rate=rate, connect_timeout=seconds,
                                           receive_timeout=seconds)

        async def collect() -> bytes:
            parts = [chunk["data"] async for chunk in communicate.stream()
                     if chunk["type"] == "audio" and "data" in chunk]
            return b"".join(parts)

        return await asyncio.wait_for(collect(), timeout)
