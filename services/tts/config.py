"""Settings of the TTS worker (env vars `VQ_TTS_*`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared import cpu
from shared.config import CommonSettings


class TtsSettings(CommonSettings):
    tts_engine: Literal["piper", "kokoro", "espeak", "edge"] = Field(
        "piper",
        description='Default engine: "piper" (offline, English), "kokoro" (offline, neural Mandarin), "espeak" '
        '(offline, many languages, robotic) or "edge" (Microsoft online voices; falls back to a local engine '
        "when unreachable or throttled). A language the default engine cannot speak goes to the local engine "
        "for it: piper for English, tts_zh_engine for Mandarin, espeak-ng for the rest.",
    )
    tts_voice: str = Field(
        "en_US-joe-medium",
        description="The piper voice: the shipped en_US-joe-medium, or a path to another voice's .onnx "
        "(its .onnx.json beside it).",
    )
    tts_zh_engine: Literal["kokoro", "espeak"] = Field(
        "kokoro",
        description='Local engine for Mandarin: "kokoro" (neural, Kokoro-82M int8; round-trip CER through whisper '
        'base about 0.06 on 12 replies full of numbers, with zf_xiaoyi) or "espeak" (espeak-ng, robotic, whisper '
        'cannot understand it). If Kokoro cannot load, espeak-ng speaks Mandarin and the worker logs why.',
    )
    tts_kokoro_voice: str = Field(
        "zf_xiaoyi",
        description="Default Kokoro voice for Mandarin. Mandarin speakers (fetched by `voicequeue models fetch`): "
        "zf_xiaoyi (female; best round-trip CER), zf_xiaoxiao, zf_xiaobei, zm_yunjian, zm_yunxi, zm_yunxia, "
        "zm_yunyang, zf_xiaoni (worst by far); Japanese speakers (bundled; jm_kumo speaks if the Mandarin voices "
        "could not be fetched): jm_kumo, jf_nezumi, jf_alpha, jf_gongitsune, jf_tebukuro. docs/benchmarks.md "
        "has each voice's CER.",
    )
    tts_kokoro_threads: int = Field(
        2,
        ge=1,
        description="onnxruntime intra-op threads for Kokoro: its share of the TTS worker's cores (a forked job "
        "process synthesizes with the parent's session; tested with 2).",
    )
    tts_cpu_threads: int = Field(
        default_factory=lambda: cpu.budget().tts, ge=1, description="onnxruntime threads of piper (its default "
        "is one per core); default: the CPU budget's share (shared/cpu.py)."
    )
    tts_zh_voice: str = Field(
        "cmn",
        description="espeak-ng voice for Mandarin (when tts_zh_engine is espeak, or Kokoro is unavailable). "
        "Other languages piper has no voice for use espeak-ng, with the voice named by the language code.",
    )
    tts_edge_voices: dict[str, str] = Field(
        default_factory=lambda: {
            "en": "en-US-AriaNeural",
            "zh": "zh-CN-XiaoxiaoNeural",
            "de": "de-DE-KatjaNeural",
            "fr": "fr-FR-DeniseNeural",
            "es": "es-ES-ElviraNeural",
            "ja": "ja-JP-NanamiNeural",
        },
        description="edge-tts voice per language (JSON in VQ_TTS_EDGE_VOICES). Languages missing here use "
        "a local engine.",
    )
    tts_edge_url: str | None = Field(
        None,
        description="WebSocket endpoint edge-tts connects to, with its query string "
        "(default: the library's Microsoft endpoint). Points it at a proxy or a test server.",
    )
    tts_edge_timeout_s: float = Field(
        10.0, description="Upper bound on one edge-tts attempt (connect + all audio); retries come on top."
    )
    tts_edge_retry_total_s: float = Field(
        5.0,
        description="Cap on the time edge-tts retries may take (tighter than retry_total_s: a local voice "
        "can speak in a fraction of a second instead).",
    )
    tts_edge_cooldown_s: float = Field(
        30.0,
        description="After edge fails for good, send jobs straight to the local engine for this long "
        "(shared through Redis), so a dead upstream does not cost every sentence its retries. 0 disables.",
    )
    tts_speed: float = Field(1.0, gt=0.2, lt=5.0, description="Speaking rate: 1.0 normal, 1.5 faster.")
    tts_max_chars: int = Field(5000, description="Longest text one job may synthesize.")
    tts_cache_ttl_s: int = Field(
        24 * 3600,
        description="How long a synthesized sentence stays in the speech cache (keyed by engine, voice, speed "
        "and text), so repeated sentences and cached answers are spoken without synthesis. 0 disables it.",
    )
    tts_cache_max_chars: int = Field(
        600, description="Longest sentence the speech cache keeps (longer texts are rarely repeated)."
    )
    tts_chunk_wait_s: float = Field(
        15.0,
        description="How long the tts stage waits, from the claim, for a sentence another worker is speaking "
        "before it speaks the sentence itself (that worker may have died).",
    )
    tts_chunk_poll_s: float = Field(0.02, description="How often the tts stage looks for a sentence it waits on.")
    tts_metrics_port: int = Field(9103, description="Port of the TTS worker's /metrics endpoint.")
