"""POST /v1/audio/speech: OpenAI-compatible, with the OpenAI SDK itself as the client."""

from __future__ import annotations

import httpx
import openai
import pytest

from shared.textnorm import wer
from tests.gateway.helpers import decoded_seconds, pcm_seconds
from tests.stack import Stack

TEXT = "Thank you for calling. Your order has shipped and will arrive on Tuesday."


@pytest.mark.parametrize("fmt", ["mp3", "wav", "opus"])
def test_openai_sdk_speech_decodes(stack: Stack, client: httpx.Client, fmt: str) -> None:
    sdk = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    response = sdk.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt)
    data = response.read()
    seconds = decoded_seconds(data)
    job = client.get(f"/v1/jobs/{response.response.headers['x-job-id']}").json()
    assert job["kind"] == "speech" and job["options"]["format"] == fmt
    assert abs(seconds - job["results"]["tts"]["duration_s"]) < 0.1, seconds
    heard = client.post("/v1/audio/transcriptions", files={"file": (f"speech.{fmt}", data)},
                        data={"language": "en"})
    assert wer(TEXT, heard.json()["text"]) <= 0.2, heard.json()["text"]


def test_pcm_and_speed(client: httpx.Client) -> None:
    normal = client.post("/v1/audio/speech", json={"input": TEXT, "voice": "nova", "response_format": "pcm"})
    assert normal.status_code == 200, normal.text
    assert normal.headers["content-type"] == "audio/pcm" and normal.headers["x-sample-format"] == "s16le"
    rate = int(normal.headers["x-sample-rate"])
    job = client.get(f"/v1/jobs/{normal.headers['x-job-id']}").json()
    assert abs(pcm_seconds(normal.content, rate) - job["results"]["tts"]["duration_s"]) < 0.01
    fast = client.post("/v1/audio/speech", json={"input": TEXT, "response_format": "pcm", "speed": 2.0,
                                                  "voice": "en_US-joe-medium"})
    assert fast.status_code == 200, fast.text
    ratio = pcm_seconds(fast.content, rate) / pcm_seconds(normal.content, rate)
    assert 0.35 < ratio < 0.7, ratio
