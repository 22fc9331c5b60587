"""A local stand-in for Microsoft's edge-tts WebSocket endpoint, speaking its protocol over real sockets.

Modes: "speak" (accepts the upgrade, reads speech.config + SSML, answers
turn.start, MP3 audio frames, turn.end), "throttle" (refuses the upgrade with
429 + Retry-After), "unavailable" (503), "hang" (accepts, then says nothing).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from tests.conftest import free_port

PATH = "/consumer/speech/synthesize/readaloud/edge/v1"


def _text_message(path: str, body: str = "{}") -> str:
    return f"X-RequestId:fake\r\nContent-Type:application/json; charset=utf-8\r\nPath:{path}\r\n\r\n{body}"


def _audio_message(data: bytes) -> bytes:
    # edge-tts reads a 2-byte big-endian header length, then "Name:value\r\n" headers, then the audio.
    header = b"X-RequestId:fake\r\nContent-Type:audio/mpeg\r\nPath:audio\r\n"
    return len(header).to_bytes(2, "big") + header + data


@dataclass
class FakeEdge:
    mode: str = "speak"
    mp3: bytes = b""
    retry_after: str = "1"
    port: int = field(default_factory=free_port)
    requests: int = 0
    ssml: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{PATH}?TrustedClientToken=fake"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.mode == "throttle":
            return web.Response(status=429, headers={"Retry-After": self.retry_after}, text="Too Many Requests")
        if self.mode == "unavailable":
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self.mode == "hang":
            await asyncio.sleep(30)
            return ws
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            if "Path:ssml" in msg.data:
                self.ssml.append(msg.data)
                await ws.send_str(_text_message("turn.start"))
                for i in range(0, len(self.mp3), 4096):
                    await ws.send_bytes(_audio_message(self.mp3[i:i + 4096]))
                await ws.send_str(_text_message("turn.end"))
        return ws


@contextmanager
def serve(fake: FakeEdge) -> Iterator[FakeEdge]:
    """Run `fake` on its port in a background thread for the duration of the block."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get(PATH, fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", fake.port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
