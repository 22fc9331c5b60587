"""Asterisk AudioSocket (TCP): a call in 8 kHz signed-linear frames against the real stack, with a barge-in.
The server paces its own audio, so a barge-in shows as the server simply stopping its frames."""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.gateway.calls.audiosocket import DTMF, HANGUP, SLIN, UUID, frame
from shared.textnorm import wer
from tests.gateway.call_helpers import onset_s, pcm
from tests.stack import Stack, free_port, wait_http

FIRST = "en_short/LDC93S1.wav"
INTERRUPTION = "en_short/librispeech-61-70968-0000.flac"


@pytest.fixture
def audiosocket(stack: Stack) -> Iterator[tuple[str, int]]:
    """A gateway on the stack's Redis and workers that also listens for AudioSocket."""
    http, tcp = free_port(), free_port()
    proc = stack.spawn("gateway-as", "gateway", env={"VQ_GATEWAY_PORT": str(http),
                                                     "VQ_CALL_AUDIOSOCKET_PORT": str(tcp)})
    try:
        wait_http(f"http://127.0.0.1:{http}/healthz", 60, proc)
        yield f"http://127.0.0.1:{http}", tcp
    finally:
        stack.stop_worker("gateway-as")
        del stack.procs["gateway-as"]


def test_audiosocket_call_with_barge_in(stack: Stack, audiosocket: tuple[str, int], speech: Path,
                                        references: dict[str, dict[str, str]]) -> None:
    base, port = audiosocket
    call_uuid = uuid.uuid4()
    onset = onset_s(speech / INTERRUPTION)

    async def run() -> tuple[list[float], float, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(frame(UUID, call_uuid.bytes))
        arrivals: list[float] = []
        queue: list[tuple[bytes, asyncio.Future[float]]] = []

        async def receive() -> None:
            while True:
                kind, length = struct.unpack(">BH", await reader.readexactly(3))
                await reader.readexactly(length)
                if kind == SLIN:
                    arrivals.append(time.monotonic())

        async def mic() -> None:
            start, n, current, offset = time.monotonic(), 0, b"", 0
            while True:
                if offset >= len(current) and queue:
                    current, future = queue.pop(0)
                    offset = 0
                    future.set_result(time.monotonic())
                chunk = current[offset:offset + 320] if offset < len(current) else b"\0" * 320
                offset += 320
                writer.write(frame(SLIN, chunk.ljust(320, b"\0")))
                n += 1
                await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))

        def play(audio: bytes) -> asyncio.Future[float]:
            future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            queue.append((audio, future))
            return future

        tasks = [asyncio.ensure_future(receive()), asyncio.ensure_future(mic())]
        try:
            await play(pcm(speech / FIRST, 8000, lead_s=0.3, tail_s=0.5))
            deadline = time.monotonic() + 300
            while not arrivals and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert arrivals, "no reply audio"
            writer.write(frame(DTMF, b"7"))
            await asyncio.sleep(0.5)
            t_voice = await play(pcm(speech / INTERRUPTION, 8000, tail_s=1.0)) + onset
            await asyncio.sleep(3.0)
            before = [t for t in arrivals if t <= t_voice + 2.0]
            last_old = max(before)
            # The next reply comes later; let it start, then hang up.
            deadline = time.monotonic() + 300
            while not any(t > last_old + 1.0 for t in arrivals) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            writer.write(frame(HANGUP))
            await writer.drain()
            await asyncio.sleep(0.5)
            return arrivals, t_voice, last_old
        finally:
            for task in tasks:
                task.cancel()
            writer.close()

    arrivals, t_voice, last_old = asyncio.run(run())
    assert last_old - t_voice <= 0.4, f"old reply audio went on {last_old - t_voice:.3f} s after the voice began"
    assert any(t > last_old + 1.0 for t in arrivals), "no second reply"
    record = find_record(stack, str(call_uuid))
    assert record["transport"] == "audiosocket" and record["end_reason"] == "caller_hung_up"
    assert record["barge_ins"] == 1 and any(d.get("digit") == "7" for d in record["dtmf"])
    assert wer(references[FIRST]["transcript"], record["turns"][0]["user"]["text"]) <= 0.25
    assert wer(references[INTERRUPTION]["transcript"], record["turns"][1]["user"]["text"]) <= 0.25
    assert record["turns"][0]["assistant"]["interrupted"]
    served = httpx.get(f"{base}/v1/calls/{record['id']}", timeout=30).json()
    assert served["transport"] == "audiosocket" and served["barge_ins"] == 1


def find_record(stack: Stack, call_uuid: str) -> dict[str, object]:
    import json

    import redis

    conn = redis.Redis.from_url(stack.redis_url)
    try:
        for key in conn.scan_iter("vq:call:call_*"):
            record = json.loads(conn.hget(key, "record") or b"{}")
            if any(d.get("uuid") == call_uuid for d in record.get("dtmf", [])):
                return dict(record)
    finally:
        conn.close()
    raise AssertionError(f"no call record for AudioSocket call {call_uuid}")
