"""A reply's audio while it is produced: GET /v1/jobs/{id}/audio/stream and /v1/jobs/{id}/chunks/{seq}."""

from __future__ import annotations

import time

import httpx
import pytest

from shared.textnorm import wer
from tests.gateway.helpers import decoded_seconds, pcm_seconds, post_chat, wav_duration

ASK = "Give me three short tips for sleeping well, one sentence each."


def _stream(client: httpx.Client, url: str, fmt: str) -> tuple[httpx.Headers, bytes, float]:
    """The streamed body, and the wall time its first audio bytes arrived."""
    body = bytearray()
    first_audio_at = 0.0
    with client.stream("GET", url, params={"format": fmt}, timeout=300) as r:
        assert r.status_code == 200, r.read()
        header = 44 if fmt == "wav" else 0
        for part in r.iter_bytes():
            body += part
            if not first_audio_at and len(body) > header:
                first_audio_at = time.time()
        return r.headers, bytes(body), first_audio_at


# Topics whose tips need no figures ("8 glasses of water" would stop the reply: docs/knowledge.md).
@pytest.mark.parametrize("fmt,topic", [("pcm", "staying focused"), ("wav", "being polite on the phone")])
def test_stream_plays_before_the_answer_is_done(client: httpx.Client, fmt: str, topic: str) -> None:
    # Each question its own: a cached answer would be finished before any audio exists.
    # Prose long enough that the first sentence is heard before the last is written: a list of short tips was
    # sometimes written in full first (about 1 run in 3, 2026-12-03, with or without the figure guard).
    links = post_chat(client, f"In five full sentences of plain prose, no list, tell me about {topic}.")
    headers, body, first_audio_at = _stream(client, links["audio_stream_url"], fmt)
    # The stream ends with the last sentence; the job ends a moment later, once the full reply is stored.
    full = client.get(links["audio_url"], params={"wait": 120})
    assert full.status_code == 200, (full.text, client.get(links["status_url"]).json())
    job = client.get(links["status_url"]).json()
    assert job["status"] == "done", job
    rate = int(headers["x-sample-rate"])
    assert headers["x-channels"] == "1" and headers["x-sample-format"] == "s16le"
    assert rate == job["chunks"][0]["sample_rate"]
    total = sum(c["duration_s"] for c in job["chunks"])
    assert len(job["chunks"]) >= 2, job["chunks"]
    if fmt == "pcm":
        assert headers["content-type"] == "application/octet-stream"
        assert abs(pcm_seconds(body, rate) - total) < 0.005 * len(job["chunks"])
    else:
        assert headers["content-type"] == "audio/wav" and body[:4] == b"RIFF" and body[8:12] == b"WAVE"
        assert abs(pcm_seconds(body[44:], rate) - total) < 0.005 * len(job["chunks"])
        assert abs(decoded_seconds(body) - total) < 0.05, "a player must decode the open-ended WAV"
    # The first sentence was audible before the LLM had written the last one.
    assert first_audio_at < job["stages"]["llm"]["finished_at"], (first_audio_at, job["stages"]["llm"])
    assert abs(job["results"]["tts"]["duration_s"] - total) < 0.01


def test_streamed_audio_says_the_reply(client: httpx.Client) -> None:
    links = post_chat(client, ASK)
    _, body, _ = _stream(client, links["audio_stream_url"], "wav")
    reply = client.get(links["status_url"]).json()["results"]["llm"]["text"]
    heard = client.post("/v1/audio/transcriptions", files={"file": ("reply.wav", body, "audio/wav")},
                        data={"language": "en"})
    assert heard.status_code == 200, heard.text
    # Piper read back by tiny.en: on a spoken list ("1. Stick to a regular sleep schedule. 2. …") the round
    # trip alone measured 0.32 ("sector regular", "tune", "bed time"). Another reply or half of this one is
    # over 0.5.
    assert wer(reply, heard.json()["text"]) <= 0.35, (reply, heard.json()["text"])


def test_chunks_one_by_one(client: httpx.Client) -> None:
    links = post_chat(client, ASK)
    client.get(links["audio_url"], params={"wait": 300})
    job = client.get(links["status_url"]).json()
    assert job["chunks"], job
    for chunk in job["chunks"]:
        r = client.get(f"/v1/jobs/{job['id']}/chunks/{chunk['seq']}")
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        assert abs(wav_duration(r.content) - chunk["duration_s"]) < 0.002
    missing = client.get(f"/v1/jobs/{job['id']}/chunks/{len(job['chunks']) + 5}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "chunk_not_found"
    assert client.get("/v1/jobs/nope/chunks/0").status_code == 404
    assert client.get("/v1/jobs/nope/audio/stream").status_code == 404


def test_stream_of_a_text_only_job_is_404(client: httpx.Client) -> None:
    links = post_chat(client, "Say hi.", speak=False)
    r = client.get(f"/v1/jobs/{links['id']}/audio/stream")
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_audio"
