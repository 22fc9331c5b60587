"""Which engine speaks a text, and falling back to a local one when edge-tts fails.

Routing: an explicit engine, else the engine the requested voice belongs to,
else `tts_engine`. If that engine has no voice for the language, the local
engine for the language speaks instead: piper where it has a voice (English),
Kokoro for Mandarin (espeak-ng when `tts_zh_engine` says so or Kokoro did not
load), espeak-ng for the rest. When edge-tts is unreachable or
throttled past its retries, the local engine speaks, the fallback is counted
and returned for the job record, and edge is skipped for
`tts_edge_cooldown_s` (a Redis key, so every job process sees it).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import redis

from services.tts.config import TtsSettings
from services.tts.engines.base import Speech, TtsEngine, base_language
from services.tts.engines.edge import EdgeEngine, is_edge_voice, voice_language
from services.tts.engines.espeak import EspeakEngine
from services.tts.engines.kokoro import KokoroEngine
from services.tts.engines.piper import PiperEngine
from shared import keys, metrics
from shared.redisio import text as as_text
from shared.retry import UpstreamError
from shared.stage import StageError
from shared.worker import timed

log = logging.getLogger(__name__)

ENGINE_NAMES = ("piper", "kokoro", "espeak", "edge")
EDGE_DOWN_KEY = keys.EDGE_DOWN

# Script → language, for texts that arrive without one (an LLM answering in Chinese).
_SCRIPTS = [
    (re.compile(r"[\u3040-\u30ff]"), "ja"),  # kana before Han: Japanese uses both
    (re.compile(r"[\uac00-\ud7af]"), "ko"),
    (re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]"), "zh"),
]


@dataclass
class Engines:
    piper: PiperEngine | None = None
    espeak: EspeakEngine | None = None
    edge: EdgeEngine | None = None
    # Kokoro takes 5-25 s to load (the model, jieba's dictionary, a warm-up). It loads beside the worker, which
    # serves English at once; only what needs Kokoro waits for it (`kokoro`), so a restarted worker is back
    # within seconds instead of after the slowest model.
    kokoro_loading: Future[KokoroEngine | None] | None = None

    @property
    def kokoro(self) -> KokoroEngine | None:
        return self.kokoro_loading.result() if self.kokoro_loading is not None else None

    @kokoro.setter
    def kokoro(self, engine: KokoroEngine | None) -> None:
        loaded: Future[KokoroEngine | None] = Future()
        loaded.set_result(engine)
        self.kokoro_loading = loaded

    def get(self, name: str) -> TtsEngine | None:
        engine: TtsEngine | None = getattr(self, name, None)
        return engine


def load(settings: TtsSettings, names: tuple[str, ...] = ENGINE_NAMES,
         background: bool = False) -> tuple[Engines, dict[str, float]]:
    """Load the engines once, at worker start (before any fork). Returns load seconds per model.

    `background`: Kokoro goes on loading after this returns (a thread does not survive fork, so only for
    workers that run jobs in-process); its load time is logged when it is done."""
    engines = Engines()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    kokoro = "kokoro" in names and "kokoro" in (settings.tts_zh_engine, settings.tts_engine)
    if kokoro and not background:  # both loads at once: the worker is up when the slower is done
        engines.kokoro_loading = _start_kokoro(settings)
    if "piper" in names:
        engines.piper, seconds[f"piper:{settings.tts_voice}"] = timed(
            lambda: _warm(PiperEngine(settings.tts_voice, settings.tts_cpu_threads)))
    if kokoro and background:  # after piper: loading beside it tripled piper's time (1.5 s to 4.6 s)
        engines.kokoro_loading = _start_kokoro(settings)
    if engines.kokoro_loading is not None and not background:
        engines.kokoro_loading.result()
        seconds[f"kokoro:{settings.tts_kokoro_voice}"] = time.perf_counter() - start
    if "espeak" in names:
        engines.espeak, seconds["espeak-ng"] = timed(lambda: EspeakEngine(settings.tts_zh_voice))
    if "edge" in names:
        engines.edge = EdgeEngine(settings)  # online: nothing to load
    return engines, seconds


def _warm(piper: PiperEngine) -> PiperEngine:
    piper.warm_up()
    return piper


def _start_kokoro(settings: TtsSettings) -> Future[KokoroEngine | None]:
    future: Future[KokoroEngine | None] = Future()

    def run() -> None:
        start = time.perf_counter()
        try:
            future.set_result(_kokoro(settings))
        except BaseException as exc:  # whoever waits for the engine gets the error
            future.set_exception(exc)
            return
        model, seconds = f"kokoro:{settings.tts_kokoro_voice}", time.perf_counter() - start
        # Loaded after the worker published its start-up load times, so it reports its own.
        metrics.set_gauge(metrics.MODEL_LOAD, seconds, stage="tts", model=model)
        log.info("model loaded", extra={"model": model, "seconds": round(seconds, 3)})

    threading.Thread(target=run, name="kokoro-load", daemon=True).start()
    return future


def _kokoro(settings: TtsSettings) -> KokoroEngine | None:
    """Kokoro, warmed up; None (espeak-ng then speaks Mandarin) when its packages or model are missing."""
    try:
        kokoro = KokoroEngine(settings.tts_kokoro_voice, threads=settings.tts_kokoro_threads,
                              models_dir=settings.models_dir)
    except (ImportError, OSError, RuntimeError) as exc:
        log.error("Kokoro did not load; espeak-ng speaks Mandarin", extra={"error": repr(exc)})
        return None
    kokoro.warm_up()
    return kokoro


@dataclass
class Synthesis:
    speech: Speech
    engine: str
    voice: str
    language: str | None
    seconds: float
    fallback: dict[str, Any] | None = None


def guess_language(text: str) -> str | None:
    for pattern, language in _SCRIPTS:
        if pattern.search(text):
            return language
    return None


def engine_of_voice(engines: Engines, voice: str) -> str:
    if is_edge_voice(voice):
        return "edge"
    if engines.piper is not None and voice == engines.piper.voice:
        return "piper"
    if engines.kokoro is not None and voice in engines.kokoro.voices:
        return "kokoro"
    if engines.espeak is not None and voice.lower() in engines.espeak.voices:
        return "espeak"
    raise StageError("unknown_voice", f"no engine has a voice named {voice!r}")


def local_engine(engines: Engines, language: str | None) -> TtsEngine:
    for name in ("piper", "kokoro", "espeak"):  # by name: only a language piper lacks waits for Kokoro's load
        engine = engines.get(name)
        if engine is not None and engine.supports(language):
            return engine
    raise StageError("unsupported_language", f"no local TTS voice for language {language!r}")


def choose(engines: Engines, settings: TtsSettings, language: str | None, voice: str | None,
           engine: str | None) -> tuple[TtsEngine, str | None]:
    """The engine to try first, and the requested voice if that engine is the one it belongs to."""
    wanted = engine or (engine_of_voice(engines, voice) if voice else None) or settings.tts_engine
    if wanted not in ENGINE_NAMES:
        raise StageError("unknown_engine", f"unknown TTS engine {wanted!r}: use {', '.join(ENGINE_NAMES)}")
    chosen = engines.get(wanted)
    own_voice = voice if voice and engine_of_voice(engines, voice) == wanted else None
    # An edge voice named outright speaks any language; the configured per-language voices do not.
    if chosen is not None and (chosen.supports(language) or (own_voice and wanted == "edge")):
        return chosen, own_voice
    return local_engine(engines, language), None


@dataclass
class Route:
    """The engine a text goes to first, the requested voice if it is that engine's, and the language."""

    engine: TtsEngine
    voice: str | None
    language: str | None

    @property
    def voice_name(self) -> str:
        return self.engine.voice_for(self.voice, self.language)


def route(engines: Engines, settings: TtsSettings, text: str, *, language: str | None = None,
          voice: str | None = None, engine: str | None = None) -> Route:
    """Where `synthesize` sends the text (before any edge fallback). Raises StageError for bad choices."""
    language = base_language(language) or (voice_language(voice) if voice and is_edge_voice(voice) else None)
    language = language or guess_language(text)
    chosen, chosen_voice = choose(engines, settings, language, voice, engine)
    return Route(chosen, chosen_voice, language)


def synthesize(engines: Engines, settings: TtsSettings, text: str, *, language: str | None = None,
               voice: str | None = None, engine: str | None = None, speed: float | None = None,
               conn: redis.Redis | None = None) -> Synthesis:
    speed = settings.tts_speed if speed is None else speed
    routed = route(engines, settings, text, language=language, voice=voice, engine=engine)
    chosen, chosen_voice, language = routed.engine, routed.voice, routed.language
    start = time.perf_counter()
    if chosen.name != "edge":
        speech = chosen.synthesize(text, voice=chosen_voice, language=language, speed=speed)
        return Synthesis(speech, chosen.name, chosen.voice_for(chosen_voice, language), language,
                         time.perf_counter() - start)
    down = _edge_down_reason(conn)
    if down is not None:
        error = UpstreamError(down, f"edge-tts failed moments ago ({down}); skipped for the cool-down")
    else:
        try:
            speech = chosen.synthesize(text, voice=chosen_voice, language=language, speed=speed)
            return Synthesis(speech, "edge", chosen.voice_for(chosen_voice, language), language,
                             time.perf_counter() - start)
        except UpstreamError as exc:
            _mark_edge_down(conn, settings, exc.reason)
            error = exc
    local = local_engine(engines, language)
    log.warning("edge-tts failed, using a local engine",
                extra={"reason": error.reason, "error": error.message, "fallback": local.name})
    metrics.inc(metrics.FALLBACKS, stage="tts", from_engine="edge", to_engine=local.name)
    speech = local.synthesize(text, voice=None, language=language, speed=speed)
    fallback = {"from": "edge", "to": local.name, "reason": error.reason, "message": error.message}
    return Synthesis(speech, local.name, local.voice_for(None, language), language,
                     time.perf_counter() - start, fallback)


def _edge_down_reason(conn: redis.Redis | None) -> str | None:
    down = conn.get(EDGE_DOWN_KEY) if conn is not None else None
    return as_text(down) if down is not None else None


def _mark_edge_down(conn: redis.Redis | None, settings: TtsSettings, reason: str) -> None:
    if conn is not None and settings.tts_edge_cooldown_s > 0:
        conn.set(EDGE_DOWN_KEY, reason, px=int(settings.tts_edge_cooldown_s * 1000))
