"""/healthz, /readyz, /metrics and the OpenAPI spec."""

from __future__ import annotations

import httpx

from shared import queues
from tests.gateway.helpers import post_turn
from tests.stack import Stack


def test_health_and_ready(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["workers"]) == set(queues.all_names())
    assert all(n >= 1 for n in ready.json()["workers"].values())


def test_openapi(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/turns", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/audio",
                 "/v1/audio/transcriptions", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"], path


def _snapshot(stack: Stack) -> dict[str, float]:
    return {
        "asr": stack.metric("asr", "voicequeue_jobs_total", stage="asr", outcome="done"),
        "llm": stack.metric("llm", "voicequeue_jobs_total", stage="llm", outcome="done"),
        "tts": stack.metric("tts", "voicequeue_jobs_total", stage="tts", outcome="done"),
        "tokens": stack.metric("llm", "voicequeue_llm_tokens_total", kind="completion"),
        "rtf": stack.metric("asr", "voicequeue_realtime_factor_count", stage="asr"),
        "wait": stack.metric("tts", "voicequeue_queue_wait_seconds_count", stage="tts", priority="live"),
        "http": stack.metric("gateway", "voicequeue_http_requests_total", route="/v1/turns", status="202"),
    }


def test_metrics_move_after_a_job(client: httpx.Client, stack: Stack, speech) -> None:
    before = _snapshot(stack)
    # A clip no other test speaks: its question must reach the LLM, not the answer cache.
    r = post_turn(client, str(speech / "en_short/librivox_sense_and_sensibility_0890.wav"))
    assert client.get(r.json()["audio_url"], params={"wait": 300}).status_code == 200
    after = _snapshot(stack)
    for key in ("asr", "llm", "tts", "rtf", "wait", "http"):
        assert after[key] == before[key] + 1, (key, before[key], after[key])
    assert after["tokens"] > before["tokens"]
    assert stack.metric("asr", "voicequeue_model_load_seconds") > 0
    gateway = stack.metrics("gateway")
    assert 'voicequeue_queue_depth{queue="asr:live"}' in gateway
    assert r.json()["id"] not in gateway, "job ids must never become label values"
