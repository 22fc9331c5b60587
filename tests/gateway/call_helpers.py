"""Helpers for the live-call tests: real recordings as PCM or μ-law, real-time streaming, event capture."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
from faster_whisper.audio import decode_audio

from services.gateway.calls import g711
from services.gateway.calls.vad import Endpointer


def pcm(path: Path, rate: int, lead_s: float = 0.0, tail_s: float = 0.0) -> bytes:
    """A recording as 16-bit mono PCM at `rate`, with silence before and after."""
    audio = decode_audio(str(path), sampling_rate=rate)
    audio = np.concatenate([np.zeros(int(lead_s * rate), np.float32), audio, np.zeros(int(tail_s * rate), np.float32)])
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()


def ulaw(path: Path, lead_s: float = 0.0, tail_s: float = 0.0) -> bytes:
    return g711.pcm_to_ulaw(pcm(path, 8000, lead_s, tail_s))


def onset_s(path: Path) -> float:
    """Where the voice in a recording starts, by the same VAD the server runs."""
    endpointer = Endpointer()
    events = endpointer.feed(pcm(path, 16000, tail_s=1.0))
    return next(e.ms for e in events if e.kind == "started") / 1000


def silence(seconds: float, rate: int) -> bytes:
    return b"\0\0" * int(seconds * rate)


class Events:
    """Every server event with its arrival time (monotonic)."""

    def __init__(self) -> None:
        self.items: list[tuple[float, dict[str, Any]]] = []
        self.changed = asyncio.Event()

    def add(self, event: dict[str, Any]) -> None:
        self.items.append((time.monotonic(), event))
        self.changed.set()

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for _, e in self.items if e.get("type") == type_]

    def timed(self, type_: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.items if e.get("type") == type_]

    async def wait(self, match: Callable[[dict[str, Any]], bool], timeout_s: float, after: int = 0
                   ) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        seen = after
        while True:
            for t, e in self.items[seen:]:
                if match(e):
                    return t, e
            seen = len(self.items)
            left = deadline - time.monotonic()
            if left <= 0:
                types = [e.get("type") for _, e in self.items[-15:]]
                raise TimeoutError(f"no matching event within {timeout_s} s; last: {types}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    async def type(self, type_: str, timeout_s: float, after: int = 0) -> tuple[float, dict[str, Any]]:
        return await self.wait(lambda e: e.get("type") == type_, timeout_s, after)


async def stream(send: Callable[[bytes], Any], audio: bytes, bytes_per_s: int, frame_ms: int = 20) -> float:
    """Send `audio` in `frame_ms` frames at real-time pace (on an absolute schedule, so it does not drift);
    returns the monotonic time the first frame went out."""
    step = bytes_per_s * frame_ms // 1000
    start = time.monotonic()
    for n, i in enumerate(range(0, len(audio), step)):
        await send(audio[i:i + step])
        delay = start + (n + 1) * frame_ms / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return start


def audio_of(deltas: list[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(d["delta"]) for d in deltas)


class Mic:
    """A live microphone: 20 ms frames at real-time pace, silence unless something is playing into it."""

    def __init__(self, send: Callable[[bytes], Any], bytes_per_s: int, silence_byte: bytes = b"\0\0") -> None:
        self.send, self.step = send, bytes_per_s // 50
        self.quiet = silence_byte * (self.step // len(silence_byte))
        self.queue: list[tuple[bytes, asyncio.Future[float]]] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Mic:
        self.task = asyncio.ensure_future(self._run())
        return self

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def play(self, audio: bytes) -> asyncio.Future[float]:
        """Queue `audio`; the future gives the monotonic time its first frame was sent."""
        started: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.queue.append((audio, started))
        return started

    async def _run(self) -> None:
        start, n = time.monotonic(), 0
        current, offset = b"", 0
        while True:
            if offset >= len(current) and self.queue:
                current, future = self.queue.pop(0)
                offset = 0
                future.set_result(time.monotonic())
            if offset < len(current):
                frame, offset = current[offset:offset + self.step], offset + self.step
            else:
                frame = self.quiet
            await self.send(frame)
            n += 1
            delay = start + n * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


@contextlib.asynccontextmanager
async def sdk_call(base_url: str, api_key: str = "unused-while-auth-is-off",
                   **session: Any) -> AsyncIterator[tuple[Any, Events]]:
    """A call through the official SDK (`client.realtime.connect`), its server events captured; `session`:
    a session.update sent (and acknowledged) first."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        events = Events()

        async def read() -> None:
            with contextlib.suppress(Exception):
                async for event in conn:
                    events.add(event.to_dict())

        reader = asyncio.ensure_future(read())
        await events.type("session.created", 10)
        if session:
            await conn.session.update(session={"type": "realtime", **session})
            await events.type("session.updated", 10)
        try:
            yield conn, events
        finally:
            reader.cancel()
