"""Bad input to the text endpoints (/v1/chat, /v1/audio/speech) and bad turn options: 4xx with a reason."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis

from tests.gateway.helpers import jobs_and_queues, wav_duration
from tests.stack import Stack

BROKEN_JSON = {"content": b'{"text": "hello", ', "headers": {"content-type": "application/json"}}

CHAT: dict[str, tuple[dict[str, Any], int, str]] = {
    "empty text": ({"json": {"text": ""}}, 400, "empty"),
    "blank text": ({"json": {"text": "  \n\t "}}, 400, "empty"),
    "text over 2000": ({"json": {"text": "a" * 2001}}, 400, "limit is 2000"),
    "missing text": ({"json": {"speak": True}}, 422, "missing field 'text'"),
    "text not a string": ({"json": {"text": ["hi"]}}, 422, "text"),
    "malformed json": (BROKEN_JSON, 400, "not valid json"),
    "not json at all": ({"content": b"text=hello", "headers": {"content-type": "application/json"}}, 400,
                        "not valid json"),
    "invalid session_id": ({"json": {"text": "hi", "session_id": "no spaces allowed"}}, 400, "session_id"),
    "session_id too long": ({"json": {"text": "hi", "session_id": "x" * 65}}, 400, "session_id"),
    "unknown voice": ({"json": {"text": "hi", "voice": "robot-9000"}}, 400, "unknown voice"),
    "unknown language": ({"json": {"text": "hi", "language": "klingon"}}, 400, "unknown language"),
    # History is kept by session_id: a "history" field used to be dropped without a word.
    "unknown field": ({"json": {"text": "hi", "history": [{"role": "user", "content": "Hi"}]}}, 422,
                      "unknown field 'history'"),
    "misspelt field": ({"json": {"text": "hi", "sesion_id": "abc"}}, 422, "unknown field 'sesion_id'"),
}

SPEECH: dict[str, tuple[dict[str, Any], int, str]] = {
    "empty input": ({"json": {"model": "tts-1", "input": "", "voice": "alloy"}}, 400, "empty"),
    "input over 4096": ({"json": {"model": "tts-1", "input": "a" * 4097, "voice": "alloy"}}, 400, "limit is 4096"),
    "missing input": ({"json": {"model": "tts-1", "voice": "alloy"}}, 422, "missing field 'input'"),
    "unknown voice": ({"json": {"input": "hi", "voice": "robot-9000"}}, 400, "unknown voice"),
    "unknown format": ({"json": {"input": "hi", "response_format": "aac"}}, 400, "'aac' is not supported"),
    "flac format": ({"json": {"input": "hi", "response_format": "flac"}}, 400, "not supported"),
    "speed too low": ({"json": {"input": "hi", "speed": 0.1}}, 400, "speed 0.1 is out of range"),
    "speed too high": ({"json": {"input": "hi", "speed": 4.5}}, 400, "out of range"),
    "speed not a number": ({"json": {"input": "hi", "speed": "fast"}}, 422, "speed"),
    "malformed json": (BROKEN_JSON, 400, "not valid json"),
}
# OpenAI's SDKs send fields of their own: /v1/audio/speech takes what it knows and leaves the rest.
SPEECH_EXTRA = {"model": "tts-1", "input": "Hello there.", "voice": "alloy", "stream_format": "audio",
                "instructions": "Speak warmly."}


def _refused(client: httpx.Client, conn: redis.Redis, path: str, request: dict[str, Any], status: int,
             words: str) -> None:
    before = jobs_and_queues(conn)
    r = client.post(path, **request)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert words.lower() in message.lower(), message
    assert jobs_and_queues(conn) == before, "a refused request must not create or enqueue a job"


@pytest.mark.parametrize("case", list(CHAT))
def test_chat_refuses(client: httpx.Client, stack_redis: redis.Redis, case: str) -> None:
    _refused(client, stack_redis, "/v1/chat", *CHAT[case])


@pytest.mark.parametrize("case", list(SPEECH))
def test_speech_refuses(client: httpx.Client, stack_redis: redis.Redis, case: str) -> None:
    _refused(client, stack_redis, "/v1/audio/speech", *SPEECH[case])


@pytest.mark.parametrize("form,words", [
    ({"session_id": "bad/id"}, "session_id"),
    ({"voice": "robot-9000"}, "unknown voice"),
])
def test_turn_options_refused(client: httpx.Client, stack_redis: redis.Redis, speech, form: dict[str, str],
                              words: str) -> None:
    data = (speech / "en_short/LDC93S1.wav").read_bytes()
    _refused(client, stack_redis, "/v1/turns", {"files": {"file": ("a.wav", data, "audio/wav")}, "data": form},
             400, words)


def test_openai_sdk_sees_the_reason(stack: Stack) -> None:
    import openai

    sdk = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        sdk.audio.speech.create(model="tts-1", voice="alloy", input="hi", response_format="aac")
    assert "not supported" in str(err.value)


def test_speech_takes_the_fields_it_knows(client: httpx.Client) -> None:
    r = client.post("/v1/audio/speech", json={**SPEECH_EXTRA, "response_format": "wav"})
    assert r.status_code == 200, r.text
    assert 0.4 < wav_duration(r.content) < 3.0  # "Hello there." spoken
