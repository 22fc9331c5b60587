"""A call's gateway process itself: the greeting when a call opens, the call metrics it exports, and a restart
(SIGTERM) that ends its calls cleanly. Each test runs a gateway of its own on the shared stack's Redis and
workers, so it can be configured, scraped and stopped alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import websockets

from services.gateway.calls import store
from shared import jobs
from shared.textnorm import wer
from tests.gateway.call_helpers import audio_of
from tests.gateway.test_realtime import RATE, events_after_cancel, left_behind, long_ask, queued_for_call, transcribe
from tests.stack import Stack, free_port, wait_http

GREETING = "Thank you for calling Example Parcels. How can I help you today?"


@contextlib.contextmanager
def gateway(stack: Stack, name: str, **env: str) -> Iterator[tuple[Stack, Any]]:
    """Another gateway on the stack's Redis and workers: (a Stack view whose base_url and metrics are its,
    its process)."""
    port = free_port()
    proc = stack.spawn(name, "gateway", env={"VQ_GATEWAY_PORT": str(port), **env})
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
        yield Stack(stack.redis_url, stack.log_dir, ports={"gateway": port}), proc
    finally:
        if proc.poll() is None:
            stack.stop_worker(name)
        del stack.procs[name]


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"


async def until(ws: Any, got: list[dict[str, Any]], type_: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), max(deadline - time.monotonic(), 0.1)))
        got.append(event)
        if event["type"] == type_:
            return event


def test_greeting_is_spoken_when_the_call_opens_and_metrics_follow_the_call(stack: Stack) -> None:
    with gateway(stack, "gateway-greeting", VQ_CALL_GREETING=GREETING) as (gw, _proc):
        assert gw.metric("gateway", "voicequeue_calls_active", transport="realtime") == 0

        async def run() -> tuple[list[dict[str, Any]], float]:
            got: list[dict[str, Any]] = []
            async with websockets.connect(ws_url(gw.base_url), max_size=None) as ws:
                await until(ws, got, "session.created", 10)
                done = await until(ws, got, "response.done", 300)
                assert done["response"]["status"] == "completed", done
                active = gw.metric("gateway", "voicequeue_calls_active", transport="realtime")
            return got, active

        got, active_during = asyncio.run(run())
        time.sleep(0.5)
        said = next(e for e in got if e["type"] == "response.output_audio_transcript.done")["transcript"]
        assert said == GREETING
        reply = audio_of([e for e in got if e["type"] == "response.output_audio.delta"])
        assert len(reply) / 2 / RATE > 2.0
        assert wer(GREETING, transcribe(stack, reply, RATE)) <= 0.25
        record = httpx.get(f"{gw.base_url}/v1/calls/{got[0]['session']['id']}", timeout=30).json()
        assert record["transcript"][0]["role"] == "assistant" and record["transcript"][0]["text"] == GREETING
        assert record["end_reason"] == "client_closed"
        assert active_during == 1
        assert gw.metric("gateway", "voicequeue_calls_active", transport="realtime") == 0
        assert gw.metric("gateway", "voicequeue_call_ends_total", transport="realtime", reason="client_closed") == 1


def test_sigterm_ends_open_calls_cleanly(stack: Stack, stack_redis: redis.Redis) -> None:
    """A restart mid-reply: the caller gets the reply cancelled, an error saying why and close code 1012 (reconnect
    now); the record says gateway_shutdown; no job or sentence job of the call is left; the process shuts down
    gracefully."""
    with gateway(stack, "gateway-restart", VQ_CALL_SHUTDOWN_TIMEOUT_S="5") as (gw, proc):

        async def run() -> tuple[str, list[dict[str, Any]], float, Any]:
            got: list[dict[str, Any]] = []
            async with websockets.connect(ws_url(gw.base_url), max_size=None) as ws:
                call_id = (await until(ws, got, "session.created", 10))["session"]["id"]
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user", "content": [{"type": "input_text", "text": long_ask()}]}}))
                await ws.send(json.dumps({"type": "response.create"}))
                await until(ws, got, "response.output_audio.delta", 300)
                mark = len(got)
                sent_at = time.monotonic()
                os.killpg(proc.pid, signal.SIGTERM)
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        got.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
                closed_after = time.monotonic() - sent_at
                assert ws.close_code == 1012 and ws.close_reason == "gateway_shutdown", (ws.close_code,
                                                                                           ws.close_reason)
            return call_id, got[mark:], closed_after, proc.wait(30)

        call_id, after, closed_after, exit_code = asyncio.run(run())
    # uvicorn re-raises the signal once its graceful shutdown is done, so a supervisor sees why it stopped.
    assert exit_code in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in (stack.log_dir / "gateway-restart.log").read_text()
    assert closed_after < 5, f"the call was closed {closed_after:.1f} s after SIGTERM"
    types = [e["type"] for e in after if e["type"] != "response.output_audio.delta"]
    assert types[-2:] == ["response.done", "error"], types
    done, error = after[-2], after[-1]
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "gateway_shutdown"
    assert error["error"]["code"] == "server_shutting_down" and error["error"]["type"] == "server_error"

    record = store.load(stack_redis, call_id)
    assert record is not None and record["status"] == "ended" and record["end_reason"] == "gateway_shutdown"
    assert record["turns"][0]["assistant"]["status"] == "cancelled"
    job_id = record["turns"][0]["reply_job_id"]
    assert jobs.status(stack_redis, job_id) in (None, "cancelled")
    assert left_behind(stack_redis, job_id) == []
    time.sleep(3)  # a sentence being synthesized finds the job gone and stores nothing
    assert "tts.chunk" not in events_after_cancel(stack_redis, job_id)
    assert queued_for_call(stack_redis, call_id) == []
    assert stack_redis.zscore("vq:calls:active:public", call_id) is None
