"""POST /v1/audio/transcriptions: OpenAI-compatible, with the OpenAI SDK itself as the client."""

from __future__ import annotations

import httpx
import openai
import pytest

from shared import audio
from shared.textnorm import cer, wer
from tests.gateway.helpers import encode
from tests.stack import Stack


def _transcribe(client: httpx.Client, path, **form: str) -> httpx.Response:
    with open(path, "rb") as f:
        return client.post("/v1/audio/transcriptions", files={"file": (path.name, f)}, data=form)


def test_openai_sdk(stack: Stack, speech, references) -> None:
    sdk = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    with open(speech / "en_short/jfk.flac", "rb") as f:
        result = sdk.audio.transcriptions.create(model="whisper-1", file=f)
    assert wer(references["en_short/jfk.flac"]["transcript"], result.text) <= 0.10, result.text


@pytest.mark.parametrize("fmt", ["text", "verbose_json", "srt", "vtt"])
def test_response_formats(client: httpx.Client, speech, fmt: str) -> None:
    r = _transcribe(client, speech / "en_short/LDC93S1.wav", response_format=fmt)
    assert r.status_code == 200, r.text
    if fmt == "verbose_json":
        body = r.json()
        assert body["language"] == "en" and abs(body["duration"] - 2.925) < 0.01
        assert body["segments"] and all(0 <= s["start"] < s["end"] <= 3.0 for s in body["segments"])
        assert "greasy wash water" in body["text"].lower()
    else:
        assert "greasy wash water" in r.text.lower()
    if fmt == "srt":
        assert r.text.startswith("1\n00:00:0") and " --> " in r.text
    if fmt == "vtt":
        assert r.text.startswith("WEBVTT\n\n00:00:0")


def test_mandarin_with_base_model(client: httpx.Client, speech, references) -> None:
    name = "zh/aishell1_BAC009S0724W0121.wav"
    r = _transcribe(client, speech / name, language="zh", response_format="verbose_json")
    assert r.status_code == 200, r.text
    assert r.json()["language"] == "zh"
    assert cer(references[name]["transcript"], r.json()["text"]) <= 0.35, r.json()["text"]


@pytest.mark.parametrize("name,bound", [
    ("telephone/LDC93S1_pcms16le_1_8000.wav", 0.35),
    ("telephone/10001-90210-01803-8khz.wav", 0.35),
])
def test_telephone(client: httpx.Client, speech, references, name: str, bound: float) -> None:
    r = _transcribe(client, speech / name)
    assert r.status_code == 200, r.text
    assert wer(references[name]["transcript"], r.json()["text"]) <= bound, r.json()["text"]


def test_stereo(client: httpx.Client, speech) -> None:
    """A different talker on each channel: both are transcribed, each under its channel's speaker."""
    path = speech / "en_short/fw_stereo_diarization.wav"
    r = _transcribe(client, path, response_format="verbose_json")
    assert r.status_code == 200, r.text
    body = r.json()
    text = body["text"].lower()
    assert "wizard" in text and "horizon" in text, text
    speakers = {(s["speaker"], s["channel"], w) for s in body["segments"] for w in ("wizard", "horizon")
                if w in s["text"].lower()}
    assert speakers == {("agent", 0, "wizard"), ("customer", 1, "horizon")}, body["segments"]
    job = client.get(f"/v1/jobs/{r.headers['X-Job-Id']}").json()
    result = job["results"]["asr"]
    assert result["channels"] == 2 and result["speakers"] == ["agent", "customer"]
    labelled = {(s["speaker"], s["channel"], w) for s in result["segments"] for w in ("wizard", "horizon")
                if w in s["text"].lower()}
    assert labelled == {("agent", 0, "wizard"), ("customer", 1, "horizon")}, result["segments"]
    srt = _transcribe(client, path, response_format="srt").text
    assert "agent: He began" in srt and "customer: The horizon" in srt, srt


@pytest.mark.parametrize("codec,container,name", [
    ("aac", "ipod", "jfk.m4a"), ("libmp3lame", "mp3", "jfk.mp3"), ("libopus", "ogg", "jfk.ogg"),
    ("pcm_s16le", "wav", "jfk-8k.wav"),
])
def test_containers(client: httpx.Client, speech, references, codec: str, container: str, name: str) -> None:
    rate = 8000 if name.endswith("8k.wav") else 48000 if codec == "libopus" else 44100
    pcm = audio.decode((speech / "en_short/jfk.flac").read_bytes(), sample_rate=rate)
    data = encode(pcm, rate, codec, container)
    r = client.post("/v1/audio/transcriptions", files={"file": (name, data)}, data={"response_format": "verbose_json"})
    assert r.status_code == 200, r.text
    assert abs(r.json()["duration"] - 11.0) < 0.2
    assert wer(references["en_short/jfk.flac"]["transcript"], r.json()["text"]) <= 0.10, r.json()["text"]
