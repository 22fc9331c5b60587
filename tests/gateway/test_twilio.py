"""GET /v1/telephony/twilio: a phone call as Twilio Media Streams sends it (μ-law 8 kHz in 20 ms frames),
against the real stack. The fake Twilio side plays the bot's audio in real time, echoes each mark once the
audio before it has played, and on `clear` drops what it still holds (echoing the dropped marks, as Twilio
does)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

from shared.textnorm import wer
from tests.gateway.call_helpers import Events, Mic, onset_s, ulaw
from tests.stack import Stack

FIRST = "en_short/LDC93S1.wav"
INTERRUPTION = "en_short/librispeech-61-70968-0000.flac"
SID = "MZ0123456789abcdef0123456789abcdef"


class FakeTwilio:
    """The Twilio end of a media stream."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.events = ws, Events()
        self.buffer: list[bytes | str] = []  # μ-law audio and mark names, in order
        self.played_bytes = 0
        self.cleared_at: float | None = None
        self.first_media_at: float | None = None

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def media(self, chunk: bytes) -> None:
        await self.send({"event": "media", "streamSid": SID,
                         "media": {"track": "inbound", "payload": base64.b64encode(chunk).decode()}})

    async def receive(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            self.events.add(message)
            if message["event"] == "media":
                self.first_media_at = self.first_media_at or time.monotonic()
                self.buffer.append(base64.b64decode(message["media"]["payload"]))
            elif message["event"] == "mark":
                self.buffer.append(message["mark"]["name"])
            elif message["event"] == "clear":
                self.cleared_at = time.monotonic()
                marks = [m for m in self.buffer if isinstance(m, str)]
                self.buffer.clear()
                for name in marks:
                    await self.send({"event": "mark", "streamSid": SID, "mark": {"name": name}})

    async def play(self) -> None:
        """Play 20 ms every 20 ms; echo a mark when playback reaches it."""
        while True:
            await asyncio.sleep(0.02)
            budget = 160
            while self.buffer and (budget > 0 or isinstance(self.buffer[0], str)):
                head = self.buffer[0]
                if isinstance(head, str):
                    self.buffer.pop(0)
                    await self.send({"event": "mark", "streamSid": SID, "mark": {"name": head}})
                    continue
                take = min(budget, len(head))
                self.played_bytes += take
                budget -= take
                if take == len(head):
                    self.buffer.pop(0)
                else:
                    self.buffer[0] = head[take:]

    def received_audio(self, after: int = 0) -> bytes:
        return b"".join(base64.b64decode(e["media"]["payload"]) for _, e in self.events.items[after:]
                        if e.get("event") == "media")


def test_twilio_call_with_barge_in(stack: Stack, speech: Path, references: dict[str, dict[str, str]]) -> None:
    url = stack.base_url.replace("http://", "ws://") + "/v1/telephony/twilio"
    interruption = ulaw(speech / INTERRUPTION, tail_s=1.0)
    onset = onset_s(speech / INTERRUPTION)

    async def run() -> dict[str, Any]:
        async with websockets.connect(url) as ws:
            twilio = FakeTwilio(ws)
            tasks = [asyncio.ensure_future(twilio.receive()), asyncio.ensure_future(twilio.play())]
            await twilio.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            await twilio.send({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {
                "streamSid": SID, "accountSid": "AC0", "callSid": "CA0", "tracks": ["inbound"],
                "customParameters": {"language": "en"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
            mic = Mic(twilio.media, 8000, silence_byte=b"\xff").start()
            try:
                await mic.play(ulaw(speech / FIRST, lead_s=0.3, tail_s=0.5))
                await twilio.events.wait(lambda e: e.get("event") == "media", 300)
                await twilio.events.wait(lambda e: e.get("event") == "mark", 300)  # a whole sentence is out
                await twilio.send({"event": "dtmf", "streamSid": SID, "dtmf": {"track": "inbound_track",
                                                                               "digit": "5"}})
                await asyncio.sleep(0.5)
                mark = len(twilio.events.items)
                t_voice = await mic.play(interruption) + onset
                t_clear, _ = await twilio.events.wait(lambda e: e.get("event") == "clear", 10, after=mark)
                played_ms = twilio.played_bytes / 8
                assert t_clear - t_voice <= 0.35, f"clear {t_clear - t_voice:.3f} s after the voice began"
                # The next reply's audio arrives after the clear; nothing of the old one does.
                await twilio.events.wait(lambda e: e.get("event") == "mark", 300,
                                         after=len(twilio.events.items))
                await asyncio.sleep(0.5)
                # The reply's job, read while it lives (hanging up cancels and deletes it).
                reply_job = stack_calls(stack)[-1]["turns"][1]["reply_job_id"]
                asked = httpx.get(f"{stack.base_url}/v1/jobs/{reply_job}", timeout=30).json()
            finally:
                mic.stop()
            await twilio.send({"event": "stop", "streamSid": SID, "stop": {"accountSid": "AC0", "callSid": "CA0"}})
            await asyncio.sleep(0.5)
            for task in tasks:
                task.cancel()
            return {"played_ms": played_ms, "asked": asked}

    result = asyncio.run(run())
    calls = stack_calls(stack)
    record = calls[-1]
    assert record["transport"] == "twilio" and record["end_reason"] == "caller_hung_up"
    assert record["barge_ins"] == 1
    assert any(d.get("digit") == "5" for d in record["dtmf"])
    assert len(record["turns"]) == 2, json.dumps(record["turns"], indent=1)
    first, second = record["turns"][0], record["turns"][1]
    assert wer(references[FIRST]["transcript"], first["user"]["text"]) <= 0.25
    assert wer(references[INTERRUPTION]["transcript"], second["user"]["text"]) <= 0.25
    heard = first["assistant"]
    assert heard["interrupted"]
    # What the server says was heard agrees with what the phone actually played (marks + elapsed time).
    assert abs(heard["heard_ms"] - result["played_ms"]) <= 250, (heard["heard_ms"], result["played_ms"])
    assert len(heard["heard_text"]) < len(heard["text"])
    asked = result["asked"]
    assert asked["inputs"]["text"] == second["user"]["text"]
    assert asked["options"]["history"][-1] == {"role": "assistant", "content": heard["heard_text"]}


def stack_calls(stack: Stack) -> list[dict[str, Any]]:
    import redis

    conn = redis.Redis.from_url(stack.redis_url)
    try:
        records = [json.loads(conn.hget(k, "record") or b"{}") for k in conn.scan_iter("vq:call:call_*")]
    finally:
        conn.close()
    return sorted((r for r in records if r), key=lambda r: r["started_at"])

