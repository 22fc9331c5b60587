"""GET /v1/telephony/twilio with VQ_TWILIO_AUTH_TOKEN set: only upgrades carrying Twilio's X-Twilio-Signature
for the stream URL (base64 HMAC-SHA1 keyed with the auth token) open a call; others get 403 with the reason.
A gateway of its own on its own Redis; no workers are needed to open or refuse a call."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
from collections.abc import Iterator

import httpx
import pytest
import redis
import websockets

from tests.conftest import running_redis
from tests.stack import Stack, free_port, wait_http

TOKEN = "0123456789abcdef0123456789abcdef"
SID = "MZ00000000000000000000000000000001"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    with running_redis(tmp_path_factory.mktemp("twilio-sig-redis")) as url:
        stack = Stack(url, tmp_path_factory.mktemp("twilio-sig-logs"))
        port = free_port()
        stack.env = {**os.environ, "VQ_REDIS_URL": url, "VQ_GATEWAY_PORT": str(port),
                     "VQ_TWILIO_AUTH_TOKEN": TOKEN, "VQ_TWILIO_TENANT": "acme"}
        proc: subprocess.Popen[bytes] = stack.spawn("gateway", "gateway")
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
            yield port, url
        finally:
            stack.stop()


def signed(url: str, token: str = TOKEN) -> str:
    return base64.b64encode(hmac.new(token.encode(), url.encode(), hashlib.sha1).digest()).decode()


async def refused(port: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/telephony/twilio", additional_headers=headers):
            pass
    response = caught.value.response
    return response.status_code, json.loads(response.body or b"{}")["error"]


def test_unsigned_or_wrongly_signed_upgrades_are_refused(gateway: tuple[int, str]) -> None:
    port, _ = gateway
    right_url = f"wss://127.0.0.1:{port}/v1/telephony/twilio"
    cases = {
        "missing_twilio_signature": {},
        "invalid_twilio_signature": {"X-Twilio-Signature": signed(right_url, token="another-accounts-token")},
    }
    wrong_path = {"X-Twilio-Signature": signed(f"wss://127.0.0.1:{port}/v1/telephony/other")}

    async def run() -> None:
        for code, headers in cases.items():
            status, error = await refused(port, headers)
            assert status == 403 and error["code"] == code, error
            assert error["message"]
        status, error = await refused(port, wrong_path)
        assert status == 403 and error["code"] == "invalid_twilio_signature"

    asyncio.run(run())


@pytest.mark.parametrize("scheme", ["wss", "ws"])  # TLS ended at a proxy, or not
def test_a_signed_upgrade_opens_a_call_for_the_configured_tenant(gateway: tuple[int, str], scheme: str) -> None:
    port, url = gateway
    headers = {"X-Twilio-Signature": signed(f"{scheme}://127.0.0.1:{port}/v1/telephony/twilio")}

    async def run() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/telephony/twilio", additional_headers=headers) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(json.dumps({"event": "start", "streamSid": SID, "start": {
                "streamSid": SID, "callSid": f"CA-{scheme}", "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
            await asyncio.sleep(0.5)
            await ws.send(json.dumps({"event": "stop", "streamSid": SID}))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)

    asyncio.run(run())
    conn = redis.Redis.from_url(url)
    try:
        records = [json.loads(conn.hget(k, "record") or b"{}") for k in conn.scan_iter("vq:call:call_*")]
    finally:
        conn.close()
    mine = [r for r in records if any(d.get("call_sid") == f"CA-{scheme}" for d in r["dtmf"])]
    assert len(mine) == 1, records
    assert mine[0]["tenant"] == "acme" and mine[0]["end_reason"] == "caller_hung_up"
    assert httpx.get(f"http://127.0.0.1:{port}/v1/calls/{mine[0]['id']}", timeout=10).status_code == 404  # acme's
