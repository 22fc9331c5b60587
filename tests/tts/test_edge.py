"""edge-tts against a real local WebSocket server (Microsoft's is unreachable here), retries and fallback."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from services.tts import formats, synth
from services.tts.engines.edge import EdgeEngine
from shared import audio
from tests.conftest import free_port
from tests.tts.conftest import make_settings, metric
from tests.tts.fake_edge import FakeEdge, serve

TEXT = "Your appointment is confirmed for Tuesday morning."


def retries(cause: str) -> float:
    return metric("voicequeue_retries_total", service="edge-tts", cause=cause)


def fallbacks(to: str) -> float:
    return metric("voicequeue_fallbacks_total", stage="tts", from_engine="edge", to_engine=to)


@pytest.fixture
def fake() -> Iterator[FakeEdge]:
    with serve(FakeEdge()) as f:
        yield f


def with_edge(engines: synth.Engines, **settings: object) -> tuple[synth.Engines, object]:
    s = make_settings(tts_engine="edge", **settings)
    return dataclasses.replace(engines, edge=EdgeEngine(s)), s


def test_edge_speaks_through_the_protocol(local_engines: synth.Engines, fake: FakeEdge) -> None:
    assert local_engines.piper is not None
    reference = local_engines.piper.synthesize(TEXT, voice=None, language="en", speed=1.0)
    fake.mp3 = formats.encode(reference, "mp3")
    engines, settings = with_edge(local_engines, tts_edge_url=fake.url)
    result = synth.synthesize(engines, settings, TEXT, language="zh-CN", speed=1.5)  # type: ignore[arg-type]
    assert (result.engine, result.voice, result.fallback) == ("edge", "zh-CN-XiaoxiaoNeural", None)
    assert result.speech.sample_rate == 24000
    assert abs(result.speech.duration_s - reference.duration_s) < 0.1
    assert np.abs(result.speech.pcm).max() > 3000
    # What reached the server: one SSML request naming the voice, the rate and the text.
    assert fake.requests == 1 and len(fake.ssml) == 1
    ssml = fake.ssml[0]
    assert "(zh-CN, XiaoxiaoNeural)" in ssml and "rate='+50%'" in ssml and TEXT in ssml


def test_unresolvable_host_falls_back_at_once(local_engines: synth.Engines) -> None:
    """A host that does not resolve (as Microsoft's does not offline): no retries, piper speaks, counted."""
    engines, settings = with_edge(local_engines, tts_edge_url="wss://speech.invalid/edge/v1?TrustedClientToken=x")
    before_fallbacks, before_retries = fallbacks("piper"), retries("connection")
    start = time.perf_counter()
    result = synth.synthesize(engines, settings, TEXT, language="en")  # type: ignore[arg-type]
    assert time.perf_counter() - start < 3
    assert result.engine == "piper" and result.speech.duration_s > 1.5
    assert result.fallback is not None
    assert result.fallback["from"] == "edge" and result.fallback["to"] == "piper"
    assert result.fallback["reason"] == "upstream_unavailable"
    assert fallbacks("piper") == before_fallbacks + 1
    assert retries("connection") == before_retries


def test_refused_connection_is_retried_then_falls_back(local_engines: synth.Engines) -> None:
    closed = f"ws://127.0.0.1:{free_port()}/edge/v1?TrustedClientToken=x"
    engines, settings = with_edge(local_engines, tts_edge_url=closed, retry_max_attempts=3)
    before = retries("connection"), fallbacks("espeak")
    result = synth.synthesize(engines, settings, "您好，请稍等。", language="zh")  # type: ignore[arg-type]
    assert result.engine == "espeak" and result.voice == "cmn"
    assert result.fallback is not None and result.fallback["reason"] == "upstream_unavailable"
    assert retries("connection") == before[0] + 2
    assert fallbacks("espeak") == before[1] + 1


def test_throttled_honours_retry_after_then_falls_back(local_engines: synth.Engines, fake: FakeEdge) -> None:
    fake.mode, fake.retry_after = "throttle", "0.3"
    engines, settings = with_edge(local_engines, tts_edge_url=fake.url, retry_max_attempts=4)
    before = retries("429"), fallbacks("piper")
    start = time.perf_counter()
    result = synth.synthesize(engines, settings, TEXT, language="en")  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    assert fake.requests == 4
    assert retries("429") == before[0] + 3
    assert 3 * 0.3 <= elapsed < 5, "three waits of the server's Retry-After (0.3 s), not the 0.02 s backoff"
    assert result.engine == "piper"
    assert result.fallback is not None and result.fallback["reason"] == "upstream_rate_limited"
    assert fallbacks("piper") == before[1] + 1


def test_retry_budget_bounds_the_wait(local_engines: synth.Engines, fake: FakeEdge) -> None:
    """Ten attempts allowed, but edge retries may take 0.5 s: after one 0.3 s wait the next would overrun."""
    fake.mode, fake.retry_after = "throttle", "0.3"
    engines, settings = with_edge(local_engines, tts_edge_url=fake.url, retry_max_attempts=10,
                                  tts_edge_retry_total_s=0.5)
    start = time.perf_counter()
    result = synth.synthesize(engines, settings, TEXT, language="en")  # type: ignore[arg-type]
    assert time.perf_counter() - start < 1.5
    assert fake.requests == 2
    assert result.engine == "piper" and result.fallback is not None
    assert result.fallback["reason"] == "upstream_rate_limited"


def test_unavailable_5xx_is_retried(local_engines: synth.Engines, fake: FakeEdge) -> None:
    fake.mode = "unavailable"
    engines, settings = with_edge(local_engines, tts_edge_url=fake.url, retry_max_attempts=2)
    before = retries("5xx")
    result = synth.synthesize(engines, settings, TEXT, language="en")  # type: ignore[arg-type]
    assert fake.requests == 2 and retries("5xx") == before + 1
    assert result.fallback is not None and result.fallback["reason"] == "upstream_unavailable"


def test_silent_server_times_out(local_engines: synth.Engines, fake: FakeEdge) -> None:
    fake.mode = "hang"
    engines, settings = with_edge(local_engines, tts_edge_url=fake.url, tts_edge_timeout_s=0.5,
                                  retry_max_attempts=2)
    before = retries("timeout")
    start = time.perf_counter()
    result = synth.synthesize(engines, settings, TEXT, language="en")  # type: ignore[arg-type]
    assert time.perf_counter() - start < 3
    assert fake.requests == 2 and retries("timeout") == before + 1
    assert result.engine == "piper" and result.fallback is not None


def test_cool_down_skips_edge_for_later_jobs(local_engines: synth.Engines, fake: FakeEdge,
                                             conn: redis.Redis) -> None:
    fake.mode, fake.retry_after = "throttle", "0"
    # Long enough that piper's fallback synthesis on a busy machine does not outlast it.
    engines, settings = with_edge(local_engines, tts_edge_url=fake.url, retry_max_attempts=2,
                                  tts_edge_cooldown_s=5.0)
    first = synth.synthesize(engines, settings, TEXT, language="en", conn=conn)  # type: ignore[arg-type]
    assert fake.requests == 2 and first.fallback is not None
    before = fallbacks("piper")
    second = synth.synthesize(engines, settings, TEXT, language="en", conn=conn)  # type: ignore[arg-type]
    assert fake.requests == 2, "edge must not be tried during the cool-down"
    assert second.fallback is not None and second.fallback["reason"] == "upstream_rate_limited"
    assert "cool-down" in second.fallback["message"]
    assert fallbacks("piper") == before + 1
    deadline = time.monotonic() + 10
    while conn.exists(synth.EDGE_DOWN_KEY) and time.monotonic() < deadline:  # the cool-down runs out
        time.sleep(0.05)
    fake.mode = "speak"
    fake.mp3 = formats.encode(second.speech, "mp3")
    third = synth.synthesize(engines, settings, TEXT, language="en", conn=conn)  # type: ignore[arg-type]
    assert third.engine == "edge" and third.fallback is None and fake.requests == 3
    assert audio.probe(formats.encode(third.speech, "wav")).duration_s > 1.0
