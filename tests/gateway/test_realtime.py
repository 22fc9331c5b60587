"""GET /v1/realtime through the official `openai` SDK, against the real stack (ASR, LLM and TTS workers).

A recording streams at real-time pace in 20 ms frames, as a phone app would send it; the server decides
when the caller has finished, answers through the live queues and streams the reply's audio back.
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from rq import Queue

from shared.textnorm import normalize, wer
from tests.gateway.call_helpers import Events, Mic, audio_of, onset_s, pcm, sdk_call, silence, stream
from tests.stack import Stack

CLIP = "en_short/LDC93S1.wav"  # "She had your dark suit in greasy wash water all year."
INTERRUPTION = "en_short/librispeech-61-70968-0000.flac"
LONG_ASK = "Please tell me a long story about a lighthouse keeper on island {n} and his cat, in at least ten sentences."
RATE = 24000


def send_pcm(conn: Any) -> Any:
    async def send(chunk: bytes) -> None:
        await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
    return send


async def keep_sending_silence(conn: Any) -> None:
    """A live microphone never stops sending: silence between turns."""
    await stream(send_pcm(conn), silence(600, RATE), RATE * 2)


def transcribe(stack: Stack, audio: bytes, rate: int) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(audio)
    r = httpx.post(f"{stack.base_url}/v1/audio/transcriptions", files={"file": ("reply.wav", buf.getvalue())},
                   data={"model": "whisper-1"}, timeout=300)
    assert r.status_code == 200, r.text
    return str(r.json()["text"])


def call_record(stack: Stack, call_id: str) -> dict[str, Any]:
    r = httpx.get(f"{stack.base_url}/v1/calls/{call_id}", timeout=30)
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()
    return record


def test_full_call_with_the_official_sdk(stack: Stack, speech: Path, references: dict[str, dict[str, str]]) -> None:
    v2v_before = stack.metric("gateway", "voicequeue_call_voice_to_voice_seconds_count", transport="realtime")

    async def run() -> None:
        # Instructions of its own: the web page's test asks the same clip's words without history, and an
        # answer cached from that turn would leave this reply with no tokens to account for.
        ga = {"instructions": "Keep replies short: this is the full-call test.",
              "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE},
                                  "turn_detection": {"type": "server_vad", "threshold": 0.5,
                                                     "prefix_padding_ms": 300, "silence_duration_ms": 500}},
                        "output": {"format": {"type": "audio/pcm", "rate": RATE}}}}
        async with sdk_call(stack.base_url, **ga) as (conn, events):
            call_id = events.of("session.created")[0]["session"]["id"]
            assert events.of("session.updated")[0]["session"]["audio"]["input"]["turn_detection"][
                "silence_duration_ms"] == 500
            await stream(send_pcm(conn), pcm(speech / CLIP, RATE, lead_s=0.5, tail_s=1.0), RATE * 2)
            mic = asyncio.ensure_future(keep_sending_silence(conn))
            try:
                _, started = await events.type("input_audio_buffer.speech_started", 5)
                _, stopped = await events.type("input_audio_buffer.speech_stopped", 5)
                assert 500 + 100 <= started["audio_start_ms"] <= 500 + 700
                assert stopped["audio_end_ms"] > started["audio_start_ms"] + 1500
                await events.type("input_audio_buffer.committed", 5)
                _, heard = await events.type("conversation.item.input_audio_transcription.completed", 120)
                assert wer(references[CLIP]["transcript"], heard["transcript"]) <= 0.2, heard["transcript"]
                _, done = await events.type("response.done", 600)
            finally:
                mic.cancel()
            assert done["response"]["status"] == "completed", done
            response_id = done["response"]["id"]
            deltas = [e for e in events.of("response.output_audio.delta") if e["response_id"] == response_id]
            reply = audio_of(deltas)
            assert len(reply) / 2 / RATE > 0.5
            text = "".join(e["delta"] for e in events.of("response.output_audio_transcript.delta"))
            assert text.strip() and text == events.of("response.output_audio_transcript.done")[0]["transcript"]
            assert wer(text, transcribe(stack, reply, RATE)) <= 0.25

            # Truncation: past the end is refused; inside, the record keeps only what was heard.
            item_id = deltas[0]["item_id"]
            audio_ms = len(reply) * 1000 // (2 * RATE)
            await conn.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                             "audio_end_ms": audio_ms + 1000, "event_id": "too-far"})
            _, error = await events.type("error", 10)
            assert error["error"]["code"] == "invalid_value" and error["error"]["event_id"] == "too-far"
            await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=audio_ms)
            _, truncated = await events.type("conversation.item.truncated", 10)
            assert truncated["audio_end_ms"] == audio_ms

        await asyncio.sleep(0.5)
        record = call_record(stack, call_id)
        assert record["status"] == "ended" and record["end_reason"] == "client_closed"
        turn = record["turns"][0]
        assert turn["user"]["text"] == heard["transcript"]
        assert turn["assistant"]["text"] == text and turn["assistant"]["status"] == "completed"
        assert 0 < turn["latency"]["voice_to_voice_s"] < 120
        v2v_after = stack.metric("gateway", "voicequeue_call_voice_to_voice_seconds_count", transport="realtime")
        assert v2v_after - v2v_before == 1
        assert record["cost"]["audio_out_s"] == pytest.approx(len(reply) / 2 / RATE, abs=0.05)
        assert record["cost"].get("cache_hits", 0) == 0 and record["cost"]["completion_tokens"] > 0, record["cost"]
        assert record["cost"]["tts_characters"] >= 0.9 * len(text.strip())  # sentences are spoken without the spaces

    asyncio.run(run())


def reply_job(stack: Stack, call_id: str, turn: int) -> str:
    job_id: str = call_record(stack, call_id)["turns"][turn]["reply_job_id"]
    return job_id


def left_behind(conn: redis.Redis, job_id: str) -> list[str]:
    """rq jobs of `job_id` still queued, running or scheduled on any TTS queue."""
    from rq.registry import ScheduledJobRegistry, StartedJobRegistry

    found = []
    for name in ("tts:live", "tts:batch"):
        queue = Queue(name, connection=conn)
        ids = [*queue.job_ids, *StartedJobRegistry(queue=queue).get_job_ids(),
               *ScheduledJobRegistry(queue=queue).get_job_ids()]
        found += [i for i in ids if i.startswith(job_id)]
    return found


def queued_for_call(conn: redis.Redis, call_id: str) -> list[str]:
    """rq jobs queued, running or scheduled on any stage queue that belong to the call's jobs, or to no job
    at all (an rq job whose record is gone is work nobody will read)."""
    from rq.registry import ScheduledJobRegistry, StartedJobRegistry

    from shared import jobs, queues

    found = []
    for name in queues.all_names():
        queue = Queue(name, connection=conn)
        for rq_id in [*queue.job_ids, *StartedJobRegistry(queue=queue).get_job_ids(),
                      *ScheduledJobRegistry(queue=queue).get_job_ids()]:
            record = jobs.load(conn, rq_id.rsplit("_", 1)[0])
            if record is None or record["options"].get("call_id") == call_id:
                found.append(f"{name}:{rq_id}")
    return found


def events_after_cancel(conn: redis.Redis, job_id: str) -> list[str]:
    entries = conn.xrange(f"vq:job:{job_id}:events")
    types = [fields[b"type"].decode() for _, fields in entries]
    return types[types.index("job.cancelled") + 1:] if "job.cancelled" in types else ["<no job.cancelled>"]


def long_ask() -> str:
    """A request for a long answer no other test has asked: a reply another test let finish is in the answer
    and speech caches and arrives whole at once, before the barge-in or shutdown a test needs it for."""
    return LONG_ASK.format(n=random.randrange(100, 1_000_000))


async def ask_for_a_long_reply(conn: Any, events: Events, ask: str | None = None) -> tuple[float, dict[str, Any]]:
    """Type a request for a long answer; returns its first audio delta (with arrival time)."""
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": ask or long_ask()}]})
    await conn.response.create()
    return await events.type("response.output_audio.delta", 300)


def test_barge_in_cancels_the_reply_and_history_keeps_what_was_heard(
        stack: Stack, stack_redis: redis.Redis, speech: Path, references: dict[str, dict[str, str]]) -> None:
    interruption = pcm(speech / INTERRUPTION, RATE, tail_s=1.0)
    onset = onset_s(speech / INTERRUPTION)

    async def run() -> bool:
        """False when the premise failed: the model's answer was short and complete before the caller spoke,
        so there was nothing to cancel (at temperature 0.5 it sometimes is, whatever it was asked)."""
        barge_ins_before = stack.metric("gateway", "voicequeue_call_barge_ins_total", transport="realtime")
        ask = long_ask()
        async with sdk_call(stack.base_url) as (conn, events):
            call_id = events.of("session.created")[0]["session"]["id"]
            mic = Mic(send_pcm(conn), RATE * 2).start()
            try:
                t_first, first = await ask_for_a_long_reply(conn, events, ask)
                old = first["response_id"]
                await asyncio.sleep(0.6)
                mark = len(events.items)
                t_voice = await mic.play(interruption) + onset
                t_started, _started = await events.type("input_audio_buffer.speech_started", 10, after=mark)
                assert t_started - t_voice <= 0.3, f"speech_started {t_started - t_voice:.3f} s after the voice began"
                t_done, done = await events.wait(lambda e: e.get("type") == "response.done"
                                                 and e["response"]["id"] == old, 10)
                if done["response"]["status"] == "completed" and t_done < t_started:
                    return False
                assert done["response"]["status"] == "cancelled", done
                old_deltas = [(t, e) for t, e in events.timed("response.output_audio.delta")
                              if e["response_id"] == old]
                # The client plays from the first delta in real time (or until it runs out of audio, when the
                # reply is produced slower than it plays) and, as SDK clients do, says where it stopped.
                received_ms = len(audio_of([e for _, e in old_deltas])) * 1000 // (2 * RATE)
                played_ms = min(int((t_started - t_first) * 1000), received_ms)
                await conn.conversation.item.truncate(item_id=first["item_id"], content_index=0,
                                                      audio_end_ms=played_ms)
                await events.type("conversation.item.truncated", 10)
                _, heard = await events.type("conversation.item.input_audio_transcription.completed", 120,
                                             after=mark)
                _, new_done = await events.wait(lambda e: e.get("type") == "response.done"
                                                and e["response"]["id"] != old, 300, after=mark)
                await asyncio.sleep(1.0)
                late = [t for t, e in events.timed("response.output_audio.delta") if e["response_id"] == old
                        and t > t_started + 0.2]
                assert not late, f"{len(late)} audio deltas of the cancelled reply came >200 ms after speech_started"
            finally:
                mic.stop()
        assert new_done["response"]["status"] == "completed"
        assert wer(references[INTERRUPTION]["transcript"], heard["transcript"]) <= 0.25

        record = call_record(stack, call_id)
        assert record["barge_ins"] == 1
        assert stack.metric("gateway", "voicequeue_call_barge_ins_total", transport="realtime") - barge_ins_before == 1
        old_job, new_job = reply_job(stack, call_id, 0), reply_job(stack, call_id, 1)
        assert left_behind(stack_redis, old_job) == []
        assert "tts.chunk" not in events_after_cancel(stack_redis, old_job)
        # The next LLM request: the typed question, only what the caller heard of the answer, then the new words.
        asked = httpx.get(f"{stack.base_url}/v1/jobs/{new_job}", timeout=30).json()
        history = asked["options"]["history"]
        assert history[0] == {"role": "user", "content": ask}
        assert history[1]["role"] == "assistant" and len(history) == 2
        assert asked["options"]["history_turns"] == 20  # the call's own history length, not the llm's default
        full = record["transcript"][1]["text"]
        said = history[1]["content"]
        assert record["transcript"][1]["interrupted"] and said == record["transcript"][1]["heard_text"]
        assert len(said) < len(full), "the unheard part of the reply is still in the history"
        played = audio_of([e for _, e in old_deltas])[: played_ms * RATE // 1000 * 2]
        # The cut is placed by time, so it may land a word or two either side of where the played audio's
        # transcript ends: in a reply cut after three words that alone is a WER of 0.67 ("Sure, I can" against
        # "Sure. I can tell you-"). So: at most 35 % of the words wrong, or at most two.
        kept = said.rstrip("…")
        played_text = transcribe(stack, played, RATE)
        errors = wer(kept, played_text) * max(1, len(normalize(kept).split()))
        print(f"heard {kept!r}; the played audio says {played_text!r}: {errors:.0f} words wrong")
        assert errors <= max(2.0, 0.35 * len(normalize(kept).split())), (kept, errors)
        assert asked["inputs"]["text"] == heard["transcript"]
        return True

    tries = 3
    assert any(asyncio.run(run()) for _ in range(tries)), f"every one of {tries} replies ended before the barge-in"


def test_short_sounds_do_not_interrupt(stack: Stack, speech: Path) -> None:
    """A 150 ms noise burst and a 120 ms syllable (below the minimum speech duration) while the bot speaks."""
    import numpy as np

    rng = np.random.default_rng(3)
    burst = (rng.normal(0, 0.3, int(0.15 * RATE)).clip(-1, 1) * 32767).astype(np.int16).tobytes()
    voice = pcm(speech / INTERRUPTION, RATE)
    at = int(onset_s(speech / INTERRUPTION) * RATE + 0.4 * RATE) * 2
    cough = voice[at: at + int(0.12 * RATE) * 2]
    before = {name: stack.metric("gateway", name, transport="realtime")
              for name in ("voicequeue_call_barge_ins_total", "voicequeue_call_vad_false_starts_total")}

    async def run() -> None:
        async with sdk_call(stack.base_url) as (conn, events):
            call_id = events.of("session.created")[0]["session"]["id"]
            mic = Mic(send_pcm(conn), RATE * 2).start()
            try:
                _, first = await ask_for_a_long_reply(conn, events)
                await mic.play(burst)
                await asyncio.sleep(1.0)
                t_cough = await mic.play(cough)
                # The reply goes on well after both sounds. On a busy machine it may take minutes to finish,
                # so this waits for more of it, not for its end.
                await asyncio.sleep(max(0.0, t_cough + 1.5 - time.monotonic()))
                await events.wait(lambda e: e.get("response_id") == first["response_id"]
                                  or e.get("type") == "response.done", 300, after=len(events.items))
            finally:
                mic.stop()
            assert events.of("input_audio_buffer.speech_started") == []
            assert all(e["response"]["status"] == "completed" for e in events.of("response.done"))
            record = call_record(stack, call_id)  # read while the call is open: hanging up cancels the reply
        assert record["barge_ins"] == 0 and record["vad_false_starts"] >= 1  # the sounds did reach the VAD
        assert not record["transcript"][1]["interrupted"]
        delta = {name: stack.metric("gateway", name, transport="realtime") - value for name, value in before.items()}
        assert delta["voicequeue_call_barge_ins_total"] == 0
        assert delta["voicequeue_call_vad_false_starts_total"] == record["vad_false_starts"]

    asyncio.run(run())
