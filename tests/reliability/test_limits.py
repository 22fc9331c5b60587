"""Limits and backpressure against a real gateway process on its own Redis (no workers: queued work stays).

Body size is checked while the body streams (raw sockets show the answer arrives before the
client finished sending), rate limits per tenant, queue depth, and stream slots.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from rq import Queue

from services.gateway import keystore
from tests.conftest import running_redis
from tests.stack import VENV_BIN, free_port, wait_http

MB = 1024 * 1024
FILE_PART = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
SLOW_PER_S, SLOW_BURST = 0.5, 3
SLOW = {"per_s": SLOW_PER_S, "burst": SLOW_BURST}
ENV = {
    "VQ_RATE_LIMIT_OVERRIDES": json.dumps({"slow1": SLOW, "slow2": SLOW}),
    "VQ_MAX_QUEUE_DEPTH_LIVE": "5",
    "VQ_MAX_STREAMS_PER_TENANT": "2",
    "VQ_SSE_KEEPALIVE_S": "1",
}


@contextlib.contextmanager
def gateway_process(tmp: Path, env: dict[str, str]) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    """A gateway (`voicequeue gateway`) on its own Redis; yields (redis url, port, process)."""
    with running_redis(tmp / "redis") as url:
        port = free_port()
        with (tmp / "gateway.log").open("ab") as log:
            proc = subprocess.Popen([str(VENV_BIN / "voicequeue"), "gateway"], stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "VQ_REDIS_URL": url, "VQ_GATEWAY_PORT": str(port), **env})
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
            yield url, port, proc
        finally:
            proc.terminate()
            proc.wait(15)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    with gateway_process(tmp_path_factory.mktemp("limits"), ENV) as running:
        yield running


@pytest.fixture(scope="module")
def keys(gw: tuple[str, int, subprocess.Popen[bytes]]) -> dict[str, str]:
    """Auth on (keys exist) with tenants of their own, so no bucket is shared between tests."""
    conn = redis.Redis.from_url(gw[0])
    made = {t: keystore.create(conn, t)[0] for t in ("main", "slow1", "slow2", "streams", "other")}
    conn.close()
    return made


@pytest.fixture
def rconn(gw: tuple[str, int, subprocess.Popen[bytes]]) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(gw[0])
    for name in conn.scan_iter("rq:queue:*"):  # no worker runs here: start each test with empty queues
        conn.delete(name)
    yield conn
    conn.close()


@pytest.fixture
def api(gw: tuple[str, int, subprocess.Popen[bytes]], keys: dict[str, str], rconn: redis.Redis,
        ) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{gw[1]}", timeout=60,
                      headers={"Authorization": f"Bearer {keys['main']}"}) as c:
        yield c


def auth(keys: dict[str, str], tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[tenant]}"}


def chat(client: httpx.Client, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/v1/chat", json={"text": "What are your opening hours?", "speak": False},
                       headers=headers or {})


def raw_post(port: int, path: str, head: dict[str, str], total: int, chunked: bool,
             prefix: bytes = b"") -> tuple[bytes, int]:
    """POST `prefix` then zero bytes up to `total` (chunked, or with Content-Length) while watching for an
    early answer. Returns (the response bytes, how many body bytes had been written when it arrived)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in head.items())]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    piece = b"\0" * (64 * 1024)

    def frame(data: bytes) -> bytes:
        return b"%x\r\n" % len(data) + data + b"\r\n" if chunked else data

    written, queued, pending, answer = 0, len(prefix), frame(prefix) if prefix else b"", b""
    sock.setblocking(False)
    try:
        while b"\r\n\r\n" not in answer:
            if not pending and queued < total:
                pending, queued = frame(piece), queued + len(piece)
            readable, writable, _ = select.select([sock], [sock] if pending else [], [], 20)
            if not readable and not writable:
                raise TimeoutError(f"no answer after writing {written} bytes")
            if readable:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
            if writable and pending:
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    pending = b""
                    continue
                pending = pending[n:]
                written += n
        sock.settimeout(10)
        head_part, _, rest = answer.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: *(\d+)", head_part, re.IGNORECASE)
        with contextlib.suppress(OSError):
            while length and len(rest) < int(length.group(1)) and (data := sock.recv(65536)):
                rest += data
        answer = head_part + b"\r\n\r\n" + rest
    finally:
        sock.close()
    return answer, written


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> dict[str, object]:
    payload = answer.split(b"\r\n\r\n", 1)[1]
    parsed: dict[str, object] = json.loads(payload[: payload.rindex(b"}") + 1])
    return parsed


def test_content_length_over_limit_refused_at_once(gw: tuple[str, int, subprocess.Popen[bytes]],
                                                    keys: dict[str, str]) -> None:
    port = gw[1]
    head = {**auth(keys, "main"), "Content-Type": "application/json"}
    start = time.monotonic()
    answer, written = raw_post(port, "/v1/chat", head, 50 * MB, chunked=False)
    assert status_of(answer) == 413, answer[:300]
    assert body_of(answer)["error"]["code"] == "request_too_large"  # type: ignore[index]
    # Nothing was read: the answer came right after the headers, long before 50 MB went out.
    assert written < 16 * MB and time.monotonic() - start < 10, (written, time.monotonic() - start)
    head = {**auth(keys, "main"), "Content-Type": "multipart/form-data; boundary=x"}
    answer, written = raw_post(port, "/v1/turns", head, 27 * MB, chunked=False, prefix=FILE_PART)
    assert status_of(answer) == 413
    assert body_of(answer)["error"]["code"] == "file_too_large"  # type: ignore[index]
    assert "25 MB" in body_of(answer)["detail"]  # type: ignore[operator]


@pytest.mark.parametrize(("path", "ctype", "limit_mb", "code"), [
    ("/v1/chat", "application/json", 1, "request_too_large"),
    ("/v1/turns", "multipart/form-data; boundary=x", 26, "file_too_large"),
    ("/v1/batches", "application/json", 1, "request_too_large"),
])
def test_chunked_oversize_body_cut_off_while_streaming(gw: tuple[str, int, subprocess.Popen[bytes]],
                                                       keys: dict[str, str], rconn: redis.Redis, path: str,
                                                       ctype: str, limit_mb: int, code: str) -> None:
    total = 400 * MB
    answer, written = raw_post(gw[1], path, {**auth(keys, "main"), "Content-Type": ctype}, total, chunked=True,
                               prefix=FILE_PART if ctype.startswith("multipart/") else b"")
    assert status_of(answer) == 413, answer[:300]
    assert body_of(answer)["error"]["code"] == code  # type: ignore[index]
    # The server needed just past the limit to refuse, and answered while the client was still sending:
    # what was written beyond the limit is socket buffering, nowhere near the 400 MB the client had.
    assert limit_mb * MB < written < limit_mb * MB + 64 * MB, written / MB
    assert sum(rconn.llen(q) for q in rconn.scan_iter("rq:queue:*")) == 0  # nothing was enqueued


def test_big_batch_upload_streams_to_disk(gw: tuple[str, int, subprocess.Popen[bytes]],
                                          keys: dict[str, str]) -> None:
    """A 300 MB multipart batch (a long recording) is accepted by the size limit and parsed without holding it
    in memory: the gateway's RSS grows by far less than the upload."""
    size = 300 * MB
    gateway = psutil.Process(gw[2].pid)
    before = gateway.memory_info().rss
    peak = before
    boundary = "vqbatchboundary"

    def body() -> Iterator[bytes]:
        nonlocal peak
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"long.wav\"\r\n"
               "Content-Type: audio/wav\r\n\r\n").encode()
        block = b"\1" * MB
        for i in range(size // MB):
            if i % 20 == 0:
                peak = max(peak, gateway.memory_info().rss)
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    with httpx.Client(timeout=120) as c:
        r = c.post(f"http://127.0.0.1:{gw[1]}/v1/batches", content=body(),
                   headers={**auth(keys, "main"), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    peak = max(peak, gateway.memory_info().rss)
    # Past the size limit middleware; the call itself fails alone (not audio / over the per-file limit).
    assert r.status_code == 202, r.text
    assert len(r.json()["calls"]) == 1 and r.json()["calls"][0]["error"]["reason"]
    assert peak - before < 120 * MB, (before / MB, peak / MB)


def test_rate_limit_429_retry_after_and_recovery(api: httpx.Client, keys: dict[str, str]) -> None:
    slow = auth(keys, "slow1")
    codes = [chat(api, slow).status_code for _ in range(SLOW_BURST)]
    assert codes == [202] * SLOW_BURST
    refused = chat(api, slow)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limited"
    retry = int(refused.headers["Retry-After"])
    assert 1 <= retry <= 1 / SLOW_PER_S + 1
    time.sleep(retry)
    assert chat(api, slow).status_code == 202  # one token refilled: accepted again
    assert chat(api, slow).status_code == 429
    counted = re.search(r'^voicequeue_gateway_refusals_total\{code="rate_limited"\} (\S+)$', api.get("/metrics").text,
                        re.MULTILINE)
    assert counted and float(counted.group(1)) >= 2


def test_buckets_are_per_tenant(api: httpx.Client, keys: dict[str, str]) -> None:
    one, two = auth(keys, "slow1"), auth(keys, "slow2")
    while chat(api, one).status_code != 429:
        pass
    # Same limits, another tenant: its own full bucket.
    assert [chat(api, two).status_code for _ in range(SLOW_BURST)] == [202] * SLOW_BURST
    assert chat(api, two).status_code == 429
    assert chat(api, auth(keys, "other")).status_code == 202  # default limits, untouched


def test_unknown_key_is_401_json(api: httpx.Client) -> None:
    r = chat(api, {"Authorization": "Bearer vq_nope_nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_queue_depth_429_names_the_queue(api: httpx.Client, rconn: redis.Redis, speech: Path) -> None:
    queue = Queue("asr:live", connection=rconn)
    for _ in range(6):  # one more than VQ_MAX_QUEUE_DEPTH_LIVE; no worker will take them
        queue.enqueue("services.asr.tasks.run", "nothing")
    audio = {"file": ("jfk.flac", (speech / "en_short/jfk.flac").read_bytes(), "audio/flac")}
    r = api.post("/v1/turns", files=audio)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "queue_full" and "asr:live" in r.json()["detail"]
    assert int(r.headers["Retry-After"]) >= 1
    assert queue.count == 6  # refused work was not added
    assert chat(api).status_code == 202  # llm:live is not full
    queue.empty()
    assert api.post("/v1/turns", files=audio).status_code == 202


def test_stream_slots_limited_and_released_on_disconnect(api: httpx.Client, keys: dict[str, str],
                                                         rconn: redis.Redis) -> None:
    mine = auth(keys, "streams")
    job = api.post("/v1/chat", json={"text": "hello"}, headers=mine).json()["id"]
    events, audio = f"/v1/jobs/{job}/events", f"/v1/jobs/{job}/audio/stream"
    held = contextlib.ExitStack()
    with held:
        first = held.enter_context(api.stream("GET", events, headers=mine, timeout=30))
        second = held.enter_context(api.stream("GET", events, headers=mine, timeout=30))
        assert first.status_code == second.status_code == 200
        assert rconn.zcard("vq:streams:streams") == 2
        for url in (events, audio):
            refused = api.get(url, headers=mine)
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_streams"
            assert int(refused.headers["Retry-After"]) >= 1
        assert api.get(events, headers=auth(keys, "other")).status_code == 404  # others' limits are theirs
    # Both clients hung up: their slots come back at once (the job never ends, so no write would notice).
    deadline = time.monotonic() + 5
    while rconn.zcard("vq:streams:streams") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rconn.zcard("vq:streams:streams") == 0
    with api.stream("GET", events, headers=mine, timeout=30) as again:
        assert again.status_code == 200
        assert next(again.iter_lines()).startswith("id:")


def test_stale_stream_slot_expires(api: httpx.Client, keys: dict[str, str], rconn: redis.Redis) -> None:
    """Slots of a gateway that died are not refreshed and stop counting after their expiry."""
    mine = auth(keys, "streams")
    job = api.post("/v1/chat", json={"text": "hello", "speak": False}, headers=mine).json()["id"]
    now_ms = int(rconn.time()[0]) * 1000
    rconn.zadd("vq:streams:streams", {"dead-a": now_ms + 60_000, "dead-b": now_ms - 1})
    with api.stream("GET", f"/v1/jobs/{job}/events", headers=mine, timeout=30) as r:
        assert r.status_code == 200  # dead-b had expired; dead-a and this stream fill the 2 slots
        assert api.get(f"/v1/jobs/{job}/events", headers=mine).status_code == 429
    rconn.delete("vq:streams:streams")
