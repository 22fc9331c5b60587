"""Who may call: API keys as Bearer or as the browser subprotocol, call records per tenant, and the per-tenant
cap on concurrent calls. A gateway of its own on its own Redis (creating keys turns auth on for every client
of a Redis); no workers are needed to open, refuse or record a call."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import websockets

from services.gateway import keystore
from tests.conftest import running_redis
from tests.stack import Stack, free_port, wait_http


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    with running_redis(tmp_path_factory.mktemp("calls-auth-redis")) as url:
        conn = redis.Redis.from_url(url)
        keys = {t: keystore.create(conn, t)[0] for t in ("acme", "globex")}
        conn.close()
        stack = Stack(url, tmp_path_factory.mktemp("calls-auth-logs"))
        port = free_port()
        stack.env = {**os.environ, "VQ_REDIS_URL": url, "VQ_GATEWAY_PORT": str(port),
                     "VQ_CALL_MAX_PER_TENANT": "1"}
        proc: subprocess.Popen[bytes] = stack.spawn("gateway", "gateway")
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
            yield f"http://127.0.0.1:{port}", keys
        finally:
            stack.stop()


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"


async def opened(ws: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert event["type"] == "session.created", event
    return event


def test_keys_as_bearer_or_subprotocol(gateway: tuple[str, dict[str, str]]) -> None:
    base, keys = gateway

    async def run() -> None:
        for headers in ({}, {"Authorization": "Bearer vq_nope_nope"}):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(ws_url(base), additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 403
        async with websockets.connect(ws_url(base), additional_headers={"Authorization": f"Bearer {keys['acme']}"}
                                      ) as ws:
            await opened(ws)
        async with websockets.connect(ws_url(base), subprotocols=[
                "realtime", f"openai-insecure-api-key.{keys['acme']}"]) as ws:
            assert ws.subprotocol == "realtime"
            await opened(ws)

    asyncio.run(run())


def test_call_records_belong_to_their_tenant(gateway: tuple[str, dict[str, str]]) -> None:
    base, keys = gateway

    async def run() -> str:
        async with websockets.connect(ws_url(base), additional_headers={"Authorization": f"Bearer {keys['acme']}"}
                                      ) as ws:
            return str((await opened(ws))["session"]["id"])

    call_id = asyncio.run(run())
    own = httpx.get(f"{base}/v1/calls/{call_id}", headers={"Authorization": f"Bearer {keys['acme']}"})
    assert own.status_code == 200 and own.json()["tenant"] == "acme"
    other = httpx.get(f"{base}/v1/calls/{call_id}", headers={"Authorization": f"Bearer {keys['globex']}"})
    unknown = httpx.get(f"{base}/v1/calls/call_0000", headers={"Authorization": f"Bearer {keys['globex']}"})
    assert other.status_code == unknown.status_code == 404
    assert other.json()["error"]["code"] == "call_not_found"
    assert httpx.get(f"{base}/v1/calls/{call_id}").status_code == 401


def test_concurrent_call_cap_per_tenant(gateway: tuple[str, dict[str, str]]) -> None:
    base, keys = gateway
    acme = {"Authorization": f"Bearer {keys['acme']}"}

    async def run() -> None:
        async with websockets.connect(ws_url(base), additional_headers=acme) as first:
            await opened(first)
            async with websockets.connect(ws_url(base), additional_headers=acme) as second:
                event = json.loads(await asyncio.wait_for(second.recv(), 10))
                assert event["type"] == "error" and event["error"]["code"] == "call_limit_reached"
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(second.recv(), 10)
                assert second.close_code == 1008 and "limit" in (second.close_reason or "")
            # Another tenant is not affected.
            async with websockets.connect(ws_url(base), additional_headers={
                    "Authorization": f"Bearer {keys['globex']}"}) as other:
                await opened(other)
        async with websockets.connect(ws_url(base), additional_headers=acme) as again:  # the slot was freed
            await opened(again)

    asyncio.run(run())


def test_a_caller_who_hangs_up_may_call_again_at_once(gateway: tuple[str, dict[str, str]]) -> None:
    """At a cap of one call, each new call starts the moment the last one's socket has closed (the server
    frees the slot only after the closing handshake)."""
    base, keys = gateway

    async def run() -> None:
        for _ in range(5):
            async with websockets.connect(ws_url(base), additional_headers={
                    "Authorization": f"Bearer {keys['globex']}"}) as ws:
                await opened(ws)

    asyncio.run(run())


