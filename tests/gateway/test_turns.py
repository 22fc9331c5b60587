"""POST /v1/turns end to end: real audio → whisper → llama.cpp → piper, over Redis and rq."""

from __future__ import annotations

import httpx

from shared.textnorm import wer
from tests.gateway.helpers import post_turn, wav_bytes, wav_duration
from tests.stack import Stack


def test_voice_turn_end_to_end(client: httpx.Client, speech, references) -> None:
    r = post_turn(client, str(speech / "en_short/jfk.flac"))
    assert r.status_code == 202, r.text
    links = r.json()
    assert set(links) == {"id", "status_url", "events_url", "audio_url", "audio_stream_url"}
    assert len(links["id"]) >= 20  # unguessable

    audio = client.get(links["audio_url"], params={"wait": 300})
    assert audio.status_code == 200, audio.text
    assert audio.headers["content-type"] == "audio/wav"
    job = client.get(links["status_url"]).json()
    assert job["status"] == "done", job
    assert job["plan"] == ["asr", "llm", "tts"]

    transcript = job["results"]["asr"]["text"]
    assert wer(references["en_short/jfk.flac"]["transcript"], transcript) <= 0.10, transcript
    reply = job["results"]["llm"]["text"]
    assert reply.strip(), "empty reply"
    duration = wav_duration(audio.content)
    assert duration > 0.5
    assert abs(duration - job["results"]["tts"]["duration_s"]) < 0.05

    for stage in ("asr", "llm", "tts"):
        state = job["stages"][stage]
        assert state["status"] == "done"
        assert state["queue_wait_s"] >= 0 and state["run_s"] > 0
        assert state["attempts"] == 1

    # The spoken reply must say what the reply text says.
    heard = client.post("/v1/audio/transcriptions", files={"file": ("reply.wav", audio.content, "audio/wav")},
                        data={"language": "en"})
    assert heard.status_code == 200, heard.text
    assert wer(reply, heard.json()["text"]) <= 0.25, (reply, heard.json()["text"])


def test_silence_fails_with_reason_and_workers_survive(client: httpx.Client, stack: Stack) -> None:
    r = client.post("/v1/turns", files={"file": ("silence.wav", wav_bytes(2.0), "audio/wav")})
    assert r.status_code == 202, r.text
    audio = client.get(r.json()["audio_url"], params={"wait": 120})
    assert audio.status_code == 409
    job = client.get(r.json()["status_url"]).json()
    assert job["status"] == "failed"
    assert job["error"]["stage"] == "llm" and job["error"]["reason"] == "empty_transcript"
    assert all(p.poll() is None for p in stack.procs.values())


def test_turn_options_are_recorded(client: httpx.Client, speech) -> None:
    r = post_turn(client, str(speech / "en_short/LDC93S1.wav"), language="en", voice="en_US-joe-medium",
                  session_id="s-1")
    assert r.status_code == 202
    job = client.get(r.json()["status_url"]).json()
    assert job["options"]["language"] == "en"
    assert job["options"]["session_id"] == "s-1"
    assert job["inputs"]["duration_s"] == 2.925
    assert job["inputs"]["sample_rate"] == 16000
    client.get(r.json()["audio_url"], params={"wait": 300})


def test_turn_wait_answers_with_audio_and_encoded_texts(client: httpx.Client, speech, references) -> None:
    """?wait=true: the reply WAV in the body, transcript and reply in percent-encoded headers (here Mandarin)."""
    from urllib.parse import unquote

    from shared.textnorm import cer

    name = "zh/aishell1_BAC009S0724W0121.wav"
    r = post_turn(client, str(speech / name), path_query="?wait=true", language="zh")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    for header in ("x-transcript", "x-reply-text"):
        assert r.headers[header].isascii() and "%E" in r.headers[header], r.headers[header]
    transcript, reply = unquote(r.headers["x-transcript"]), unquote(r.headers["x-reply-text"])
    assert cer(references[name]["transcript"], transcript) <= 0.35, transcript
    job = client.get(f"/v1/jobs/{r.headers['x-job-id']}").json()
    assert job["results"]["asr"]["text"] == transcript
    assert job["results"]["llm"]["text"] == reply
    assert abs(wav_duration(r.content) - job["results"]["tts"]["duration_s"]) < 0.05


def test_turn_wait_english(client: httpx.Client, speech) -> None:
    from urllib.parse import unquote

    r = post_turn(client, str(speech / "en_short/LDC93S1.wav"), path_query="?wait=true")
    assert r.status_code == 200, r.text
    assert "greasy wash water" in unquote(r.headers["x-transcript"]).lower()
    assert unquote(r.headers["x-reply-text"]).strip()
    assert wav_duration(r.content) > 0.5
