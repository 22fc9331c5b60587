"""The Twilio Media Streams adapter: Twilio's JSON messages ⇄ `CallSession`.

In: `connected`, `start` (stream and call ids, custom parameters, μ-law 8 kHz), `media` (base64 μ-law,
20 ms frames), `mark` (echoed once the audio before it has played), `dtmf`, `stop`.
Out: `media`, `mark` after each sentence (its name says how much of the reply has then been heard),
and `clear` on a barge-in, which drops the audio Twilio still holds. A transfer to a person is done
by Twilio itself: the stream closes and the `<Connect action>` URL (`routes/twilio_after.py`) answers
with `<Dial>` to `call_transfer_to`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from services.gateway.calls.formats import ULAW8
from services.gateway.calls.session import CallSession
from shared import keys

log = logging.getLogger(__name__)
TRANSFER_TTL_S = 600


class TwilioCall:
    def __init__(self, ws: WebSocket, session: CallSession) -> None:
        self.ws, self.session = ws, session
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.lock = asyncio.Lock()
        session._send = self.on_event
        session.set_formats(ULAW8, ULAW8)

    async def write(self, message: dict[str, Any]) -> None:
        async with self.lock:
            await self.ws.send_text(json.dumps(message))

    async def on_event(self, event: dict[str, Any]) -> None:
        """The session's output as Twilio messages; everything else the Realtime protocol says is dropped."""
        if self.stream_sid is None:
            return
        type_, sid = event["type"], self.stream_sid
        if type_ == "response.output_audio.delta":
            await self.write({"event": "media", "streamSid": sid, "media": {"payload": event["delta"]}})
        elif type_ == "x.sentence_end":
            await self.write({"event": "mark", "streamSid": sid,
                              "mark": {"name": f"{event['item_id']}:{event['audio_end_ms']}"}})
        elif type_ == "x.interrupt":
            await self.write({"event": "clear", "streamSid": sid})
        elif type_ == "call.transfer" and self.call_sid:
            # Twilio asks the <Connect action> URL what to do once the stream closes: dial this.
            await asyncio.to_thread(self.session.conn.set, keys.twilio_transfer(self.call_sid),
                                    event.get("target") or "", ex=TRANSFER_TTL_S)

    async def handle(self, message: dict[str, Any]) -> bool:
        """One message from Twilio; False once the stream has stopped."""
        kind = message.get("event")
        if kind == "start":
            start = message.get("start") or {}
            self.stream_sid = str(message.get("streamSid") or start.get("streamSid") or "")
            self.call_sid = str(start.get("callSid") or "") or None
            params = start.get("customParameters") or {}
            if isinstance(params, dict) and params.get("language"):
                self.session.config.language = str(params["language"])
            self.session.dtmf.append({"event": "start", "call_sid": start.get("callSid"), "at": time.time()})
            await self.session.greet()
        elif kind == "media":
            media = message.get("media") or {}
            if media.get("track", "inbound") not in ("inbound", "inbound_track"):
                return True
            try:
                audio = base64.b64decode(str(media.get("payload") or ""), validate=True)
            except (binascii.Error, ValueError):
                log.warning("twilio media with invalid base64 dropped", extra={"call_id": self.session.id})
                return True
            await self.session.append_audio(audio)
        elif kind == "mark":
            name = str((message.get("mark") or {}).get("name") or "")
            item_id, _, end_ms = name.rpartition(":")
            if item_id and end_ms.isdigit():
                self.session.audio_played(item_id, float(end_ms))
        elif kind == "dtmf":
            digit = (message.get("dtmf") or {}).get("digit")
            self.session.dtmf.append({"digit": digit, "at": time.time()})
        elif kind == "stop":
            return False
        return True


async def serve(ws: WebSocket, session: CallSession) -> None:
    call = TwilioCall(ws, session)
    if not await session.start():
        await ws.close(code=1008, reason="concurrent call limit reached")
        return

    async def close() -> None:
        await ws.close(code=session.close_code(), reason=session.end_reason or "")

    await session.run(_receive(ws, call), hung_up="caller_hung_up", close=close)


async def _receive(ws: WebSocket, call: TwilioCall) -> None:
    while True:
        try:
            raw = await ws.receive_text()
        except (WebSocketDisconnect, RuntimeError, KeyError):
            return
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("non-JSON message from twilio dropped", extra={"call_id": call.session.id})
            continue
        if not isinstance(message, dict):
            continue
        try:
            if not await call.handle(message):
                return
        except Exception:  # one bad message must not end the call
            log.exception("twilio message failed", extra={"call_id": call.session.id})
