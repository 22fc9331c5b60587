"""Live calls: bad input, idle timeout, maximum duration and dropped sockets, against the real stack."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import websockets

from shared import jobs, keys
from shared.textnorm import wer
from tests.gateway.call_helpers import Events, Mic, audio_of, sdk_call
from tests.gateway.test_realtime import (
    CLIP,
    RATE,
    ask_for_a_long_reply,
    call_record,
    events_after_cancel,
    left_behind,
    queued_for_call,
    reply_job,
    send_pcm,
    transcribe,
)
from tests.stack import Stack, free_port, wait_http


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"


async def expect_error(ws: Any, message: str | bytes, code: str) -> dict[str, Any]:
    await ws.send(message)
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if event["type"] == "error":
            assert event["error"]["code"] == code, event
            return dict(event["error"])
        assert event["type"] not in ("session.updated",), f"expected an error {code}, got {event['type']}"


def append(audio: bytes | str) -> str:
    data = audio if isinstance(audio, str) else base64.b64encode(audio).decode()
    return json.dumps({"type": "input_audio_buffer.append", "audio": data})


def wav_file(seconds: float) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"\0\0" * int(seconds * RATE))
    return buf.getvalue()


def test_bad_input_gets_error_events_and_the_call_goes_on(stack: Stack) -> None:
    async def run() -> None:
        async with websockets.connect(ws_url(stack.base_url), max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await expect_error(ws, "{not json", "invalid_json")
            error = await expect_error(ws, json.dumps({"type": "response.dance", "event_id": "ev1"}), "unknown_event")
            assert error["event_id"] == "ev1" and "response.dance" in error["message"]
            await expect_error(ws, append("@@@not base64@@@"), "invalid_base64")
            await expect_error(ws, append(b"\0" * (15 * 1024 * 1024 + 2)), "audio_too_large")
            await expect_error(ws, append(b"\0" * 321), "invalid_audio")  # half a 16-bit sample
            # A whole WAV file where raw 24 kHz samples were declared.
            error = await expect_error(ws, append(wav_file(0.3)), "invalid_audio_format")
            assert "WAV" in error["message"] and "pcm16" in error["message"]
            await expect_error(ws, json.dumps({"type": "session.update", "session": {"instructions": 42}}),
                               "invalid_value")
            await expect_error(ws, json.dumps({"type": "session.update", "session": {
                "type": "realtime", "audio": {"input": {"format": {"type": "audio/flac"}}}}}), "invalid_audio_format")
            await expect_error(ws, json.dumps({"type": "session.update", "session": {
                "input_audio_format": "g722"}}), "invalid_audio_format")
            await expect_error(ws, b"\x00\x01binary", "invalid_event")
            await expect_error(ws, json.dumps({"type": "conversation.item.truncate", "item_id": "item_nope",
                                               "content_index": 0, "audio_end_ms": 10}), "item_not_found")
            # Turn detection off: the client commits, and < 100 ms is refused.
            await ws.send(json.dumps({"type": "session.update", "session": {"turn_detection": None}}))
            updated = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert updated["type"] == "session.updated"
            assert updated["session"]["audio"]["input"]["turn_detection"] is None
            assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
            await ws.send(append(b"\0\0" * int(RATE * 0.05)))
            await expect_error(ws, json.dumps({"type": "input_audio_buffer.commit"}),
                               "input_audio_buffer_commit_empty")
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "input_audio_buffer.cleared"
            # Still alive, and the beta shape is understood.
            await ws.send(json.dumps({"type": "session.update", "session": {"input_audio_format": "g711_ulaw",
                                                                            "output_audio_format": "g711_alaw"}}))
            updated = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert updated["type"] == "session.updated"
            assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
            assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcma"}

    asyncio.run(run())


def test_idle_call_gets_a_spoken_goodbye_and_is_closed(stack: Stack) -> None:
    async def run() -> tuple[str, Events]:
        async with sdk_call(stack.base_url, audio={"input": {"turn_detection": {
                "type": "server_vad", "idle_timeout_ms": 2000}}}) as (conn, events):
            call_id = events.of("session.created")[0]["session"]["id"]
            mic = Mic(send_pcm(conn), RATE * 2).start()
            try:
                _, done = await events.type("response.done", 120)
                assert done["response"]["status"] == "completed"
                await asyncio.wait_for(conn_closed(conn), 60)
            finally:
                mic.stop()
            return call_id, events

    call_id, events = asyncio.run(run())
    said = events.of("response.output_audio_transcript.done")[0]["transcript"]
    assert said == "I have not heard anything for a while, so I will end the call now. Goodbye."
    assert wer(said, transcribe(stack, audio_of(events.of("response.output_audio.delta")), RATE)) <= 0.25
    record = call_record(stack, call_id)
    assert record["end_reason"] == "idle_timeout" and record["status"] == "ended"


async def conn_closed(conn: Any) -> None:
    """Wait until the server closes the SDK connection."""
    while True:
        try:
            await conn.send({"type": "input_audio_buffer.clear"})
        except Exception:
            return
        await asyncio.sleep(0.2)


def test_dropped_socket_cancels_pending_work(stack: Stack, stack_redis: redis.Redis) -> None:
    async def run() -> str:
        async with sdk_call(stack.base_url) as (conn, events):
            call_id = events.of("session.created")[0]["session"]["id"]
            await ask_for_a_long_reply(conn, events)
            await conn.close()  # the caller's app dies mid-reply
        return str(call_id)

    call_id = asyncio.run(run())
    job_id = reply_job(stack, call_id, 0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and call_record(stack, call_id)["status"] != "ended":
        time.sleep(0.2)
    record = call_record(stack, call_id)
    assert record["status"] == "ended" and record["end_reason"] == "client_closed"
    assert jobs.status(stack_redis, job_id) in (None, "cancelled")
    assert left_behind(stack_redis, job_id) == []
    time.sleep(3)  # anything still running finds the job gone and stores nothing
    assert "tts.chunk" not in events_after_cancel(stack_redis, job_id)
    assert queued_for_call(stack_redis, call_id) == []
    # This call's slot is free. Not the whole set: the stack's Redis is shared by the session, and the calls
    # other tests made on it (test_realtime_gateway.py runs and stops gateways of its own) are not this
    # test's business. Two full runs found one slot in that set 3 s after this call had ended, not saying
    # whose: the message now does.
    held = {}
    for member in stack_redis.zrange(keys.calls_active("public"), 0, -1):
        other = json.loads(stack_redis.hget(keys.call(member.decode()), "record") or "{}")
        held[member.decode()] = (other.get("status"), other.get("end_reason"))
    assert call_id not in held, f"the dropped call still holds its slot; slots held now: {held}"


@pytest.fixture
def short_calls(stack: Stack) -> Any:
    """A second gateway on the same Redis and workers whose calls last at most 4 s."""
    port = free_port()
    proc = stack.spawn("gateway-short", "gateway", env={"VQ_GATEWAY_PORT": str(port), "VQ_CALL_MAX_DURATION_S": "4"})
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stack.stop_worker("gateway-short")
        del stack.procs["gateway-short"]


def test_max_duration_ends_the_call_with_a_goodbye(stack: Stack, short_calls: str) -> None:
    async def run() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with websockets.connect(ws_url(short_calls), max_size=None) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
            assert ws.close_code == 1000 and ws.close_reason == "max_duration"
        return got

    got = asyncio.run(run())
    call_id = got[0]["session"]["id"]
    said = next(e for e in got if e["type"] == "response.output_audio_transcript.done")["transcript"]
    assert "time limit" in said
    goodbye = audio_of([e for e in got if e["type"] == "response.output_audio.delta"])
    assert wer(said, transcribe(stack, goodbye, RATE)) <= 0.25  # spoken in full before the close
    r = httpx.get(f"{short_calls}/v1/calls/{call_id}", timeout=30)
    assert r.json()["end_reason"] == "max_duration"


def test_transcription_pieces_are_cut_while_speaking(stack: Stack, stack_redis: redis.Redis, speech: Path) -> None:
    """A long utterance reaches ASR in several pieces before the caller stops, so little is left at the end;
    each piece is encoded in a trimmed window, not whisper's 30 s."""
    from tests.gateway.call_helpers import pcm

    clip = speech / "en_short/librispeech-1995-1837-0001.wav"  # 8.7 s with short pauses

    async def run() -> str:
        async with sdk_call(stack.base_url, audio={"input": {"turn_detection": {
                "type": "server_vad", "create_response": False}}}) as (conn, events):
            call_id = events.of("session.created")[0]["session"]["id"]
            mic = Mic(send_pcm(conn), RATE * 2).start()
            try:
                await mic.play(pcm(clip, RATE))
                await events.type("conversation.item.input_audio_transcription.completed", 120)
            finally:
                mic.stop()
            return str(call_id)

    call_id = asyncio.run(run())
    turn = call_record(stack, call_id)["turns"][0]
    assert turn["asr_pieces"] >= 2, turn
    assert "assistant" not in turn  # create_response: false
    ids = [key.decode().removeprefix(keys.job("")) for key in stack_redis.scan_iter(match=keys.JOB_PATTERN)]
    pieces = [r for r in (jobs.load(stack_redis, i) for i in ids if ":" not in i)  # not a job's events stream
              if r is not None and r["kind"] == "transcription" and r["options"].get("call_id") == call_id]
    assert len(pieces) >= turn["asr_pieces"], pieces
    windows = {r["results"]["asr"].get("encoder_window_s") for r in pieces if r["status"] == "done"}
    assert windows == {15.0}, windows  # every piece is under 10 s: the 15 s floor


ZEBRA = "Whatever the caller asks, your reply must contain the word zebra."


def test_session_instructions_go_with_the_calls_reply_jobs(stack: Stack) -> None:
    """`instructions` from session.update travel with each reply job (tests/llm/test_call_options.py shows the
    llm stage puts them in the system prompt). Whether the small local model obeys them is not asserted: with
    Qwen2.5-Coder-1.5B it answered "The sky is blue on a clear day." to this one, without the zebra."""
    async def ask(**session: Any) -> tuple[str, str]:
        async with sdk_call(stack.base_url, **session) as (conn, events):
            call_id = str(events.of("session.created")[0]["session"]["id"])
            if session:
                assert events.of("session.updated")[0]["session"]["instructions"] == ZEBRA
            await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "What colour is the sky on a clear day?"}]})
            await conn.response.create()
            _, done = await events.type("response.done", 300)
            assert done["response"]["status"] == "completed", done
            return call_id, str(events.of("response.output_audio_transcript.done")[0]["transcript"])

    instructed_call, _ = asyncio.run(ask(instructions=ZEBRA))
    plain_call, _ = asyncio.run(ask())
    instructed = httpx.get(f"{stack.base_url}/v1/jobs/{reply_job(stack, instructed_call, 0)}", timeout=30).json()
    plain = httpx.get(f"{stack.base_url}/v1/jobs/{reply_job(stack, plain_call, 0)}", timeout=30).json()
    assert instructed["options"]["instructions"] == ZEBRA
    assert plain["options"].get("instructions") is None


def eager_count(stack: Stack, outcome: str) -> float:
    return stack.metric("gateway", "voicequeue_call_eager_replies_total", transport="realtime", outcome=outcome)


def test_the_reply_started_at_the_final_pause_is_the_one_sent(stack: Stack, speech: Path,
                                                              references: dict[str, dict[str, str]]) -> None:
    """Eager end of turn: the reply is submitted when the caller pauses, before the silence window ends the
    turn; when the turn does end there, that reply (same words, same history) is the one the caller hears."""
    from tests.gateway.call_helpers import pcm

    adopted_before = eager_count(stack, "adopted")

    async def run() -> tuple[str, str]:
        async with sdk_call(stack.base_url) as (conn, events):
            call_id = str(events.of("session.created")[0]["session"]["id"])
            mic = Mic(send_pcm(conn), RATE * 2).start()
            try:
                await mic.play(pcm(speech / CLIP, RATE, lead_s=0.3))
                _, heard = await events.type("conversation.item.input_audio_transcription.completed", 120)
                _, done = await events.type("response.done", 600)
            finally:
                mic.stop()
            assert done["response"]["status"] == "completed", done
            assert len(events.of("response.created")) == 1
            return call_id, str(heard["transcript"])

    call_id, heard = asyncio.run(run())
    assert wer(references[CLIP]["transcript"], heard) <= 0.2, heard
    turn = call_record(stack, call_id)["turns"][0]
    assert turn["eager"] is True, turn
    reply = httpx.get(f"{stack.base_url}/v1/jobs/{turn['reply_job_id']}", timeout=30).json()
    assert reply["inputs"]["text"] == heard and reply["status"] == "done", reply
    assert eager_count(stack, "adopted") - adopted_before == 1


def test_an_early_reply_is_dropped_when_the_caller_goes_on(stack: Stack, stack_redis: redis.Redis, speech: Path,
                                                           references: dict[str, dict[str, str]]) -> None:
    """The caller pauses 0.3 s mid-sentence (shorter than the 0.5 s silence window) and goes on: the reply
    started at that pause is cancelled, no job of it is left, and the one reply sent answers the whole
    sentence."""
    from tests.gateway.call_helpers import pcm

    clip = "en_short/librispeech-61-70968-0000.flac"
    audio = pcm(speech / clip, RATE)
    samples = np.frombuffer(audio, dtype=np.int16)
    third = len(samples) // 3
    cut = 2 * (third + int(np.argmax(np.abs(samples[third:2 * third]))))  # inside a word: no pause of its own
    paused = audio[:cut] + bytes(2 * int(0.3 * RATE)) + audio[cut:]
    dropped_before = eager_count(stack, "dropped")

    async def run() -> tuple[str, str]:
        async with sdk_call(stack.base_url) as (conn, events):
            call_id = str(events.of("session.created")[0]["session"]["id"])
            mic = Mic(send_pcm(conn), RATE * 2).start()
            try:
                await mic.play(bytes(2 * int(0.3 * RATE)) + paused)
                _, heard = await events.type("conversation.item.input_audio_transcription.completed", 120)
                _, done = await events.type("response.done", 600)
            finally:
                mic.stop()
            assert done["response"]["status"] == "completed", done
            assert len(events.of("input_audio_buffer.speech_stopped")) == 1
            assert len(events.of("response.created")) == 1
            return call_id, str(heard["transcript"])

    call_id, heard = asyncio.run(run())
    assert wer(references[clip]["transcript"], heard) <= 0.3, heard
    assert eager_count(stack, "dropped") - dropped_before >= 1
    turn = call_record(stack, call_id)["turns"][0]
    reply = httpx.get(f"{stack.base_url}/v1/jobs/{turn['reply_job_id']}", timeout=30).json()
    assert reply["inputs"]["text"] == heard, reply
    time.sleep(1.0)
    assert queued_for_call(stack_redis, call_id) == []
