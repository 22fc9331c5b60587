"""The Asterisk AudioSocket adapter (TCP): type-length frames ⇄ `CallSession`.

A frame is 1 byte of type, 2 bytes of big-endian length, then the payload: 0x00 hangup, 0x01 the call's
UUID (16 bytes, first), 0x03 a DTMF digit, 0x10 signed linear 16-bit 8 kHz audio (320 bytes = 20 ms),
0xff an error. There is no mark and no clear: this side paces its own audio, one 20 ms frame every 20 ms,
so what it has written is what the caller has heard, and a barge-in simply stops the writing.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis

from services.gateway.calls.formats import AudioFormat
from services.gateway.calls.session import CallSession
from services.gateway.config import GatewaySettings

log = logging.getLogger(__name__)

HANGUP, UUID, DTMF, SLIN, ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
SLIN8 = AudioFormat("pcm16", 8000)
FRAME_BYTES = 320  # 20 ms


def frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind, length = struct.unpack(">BH", await reader.readexactly(3))
    return kind, await reader.readexactly(length)


class AudioSocketCall:
    def __init__(self, writer: asyncio.StreamWriter, session: CallSession) -> None:
        self.writer, self.session = writer, session
        self.outbound: list[tuple[str, bytearray]] = []  # (item id, audio) not yet written
        self.written_ms: dict[str, float] = {}
        session._send = self.on_event
        session.set_formats(SLIN8, SLIN8)

    async def on_event(self, event: dict[str, Any]) -> None:
        if event["type"] == "response.output_audio.delta":
            audio = base64.b64decode(event["delta"])
            if self.outbound and self.outbound[-1][0] == event["item_id"]:
                self.outbound[-1][1].extend(audio)
            else:
                self.outbound.append((event["item_id"], bytearray(audio)))
        elif event["type"] == "x.interrupt":
            self.outbound.clear()

    async def pace(self) -> None:
        """Write one 20 ms frame every 20 ms while there is audio; report how far each reply has played."""
        start, n = time.monotonic(), 0
        while True:
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
            if not self.outbound:
                continue
            item_id, audio = self.outbound[0]
            chunk = bytes(audio[:FRAME_BYTES])
            del audio[:FRAME_BYTES]
            if not audio:
                self.outbound.pop(0)
            self.writer.write(frame(SLIN, chunk.ljust(FRAME_BYTES, b"\0")))
            self.written_ms[item_id] = self.written_ms.get(item_id, 0.0) + len(chunk) / 16
            self.session.audio_played(item_id, self.written_ms[item_id])

    async def handle(self, kind: int, payload: bytes) -> bool:
        if kind == SLIN:
            await self.session.append_audio(payload)
        elif kind == DTMF:
            self.session.dtmf.append({"digit": payload.decode(errors="replace"), "at": time.time()})
        elif kind == UUID:
            self.session.dtmf.append({"event": "start", "uuid": str(uuid.UUID(bytes=payload[:16])), "at": time.time()})
        elif kind in (HANGUP, ERROR):
            return False
        return True


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, conn: redis.Redis,
                aconn: aioredis.Redis, settings: GatewaySettings) -> None:
    session = CallSession(conn=conn, aconn=aconn, settings=settings, tenant=settings.call_audiosocket_tenant,
                          send=_unset, transport="audiosocket")
    call = AudioSocketCall(writer, session)
    if not await session.start():
        writer.write(frame(HANGUP))
        writer.close()
        return
    pacer = asyncio.ensure_future(call.pace())

    async def close() -> None:
        pacer.cancel()
        writer.write(frame(HANGUP))
        await writer.drain()
        writer.close()

    await session.greet()
    await session.run(_receive(reader, call), hung_up="caller_hung_up", close=close)


async def _receive(reader: asyncio.StreamReader, call: AudioSocketCall) -> None:
    while True:
        try:
            kind, payload = await read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        try:
            if not await call.handle(kind, payload):
                return
        except Exception:  # one bad frame must not end the call
            log.exception("audiosocket frame failed", extra={"call_id": call.session.id})


async def _unset(_event: dict[str, Any]) -> None:
    raise RuntimeError("the adapter sets the session's send")


async def start_server(conn: redis.Redis, aconn: aioredis.Redis, settings: GatewaySettings) -> asyncio.Server:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve(reader, writer, conn=conn, aconn=aconn, settings=settings)

    return await asyncio.start_server(accept, settings.gateway_host, settings.call_audiosocket_port)
