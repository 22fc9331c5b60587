"""A battery of malformed HTTP requests: every one is a 4xx (never a 5xx), nothing is stored, the stack lives on.

Some cases cannot be sent by an HTTP client library (CR/LF in a header, raw invalid bytes in the
request line, a chunked body with no length), so those go over a raw socket.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from shared import jobs, queues
from tests.stack import Stack


@dataclass
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw(stack: Stack, request: bytes, body_chunks: list[bytes] | None = None, timeout_s: float = 30) -> Reply:
    """Send bytes as they are; read the status line and whatever body the server sends before closing."""
    with socket.create_connection(("127.0.0.1", stack.ports["gateway"]), timeout=timeout_s) as s:
        s.sendall(request)
        try:
            for chunk in body_chunks or []:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early and closed: exactly what an early 413 looks like
        data = b""
        while b"\r\n\r\n" not in data:
            part = s.recv(65536)
            if not part:
                break
            data += part
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        while length is not None and len(rest) < length:
            part = s.recv(65536)
            if not part:
                break
            rest += part
        return Reply(status, rest)


def chunked(n_chunks: int, size: int) -> list[bytes]:
    return [f"{size:x}\r\n".encode() + b"\0" * size + b"\r\n" for _ in range(n_chunks)] + [b"0\r\n\r\n"]


def http(stack: Stack, method: str, path: str, **kwargs: Any) -> Reply:
    with httpx.Client(base_url=stack.base_url, timeout=60) as c:
        r = c.request(method, path, **kwargs)
    return Reply(r.status_code, r.content)


def existing_job(stack: Stack) -> str:
    """A job record of the open tenant, written directly, so the event/audio cases have a real id to aim at."""
    conn = redis.Redis.from_url(stack.redis_url)
    job_id = jobs.create(conn, kind="chat_text", priority="live", inputs={"text": "hi"}, options={}, ttl_s=600)
    conn.close()
    return job_id


def _get_events(last_event_id: str) -> Callable[[Stack], Reply]:
    return lambda s: http(s, "GET", f"/v1/jobs/{existing_job(s)}/events", headers={"Last-Event-ID": last_event_id})


MB = 1024 * 1024
CASES: dict[str, Callable[[Stack], Reply]] = {
    "chat: malformed JSON": lambda s: http(s, "POST", "/v1/chat", content=b'{"text": "hi"',
                                          headers={"content-type": "application/json"}),
    "chat: invalid UTF-8 in JSON": lambda s: http(s, "POST", "/v1/chat", content=b'{"text": "\xff\xfe\xfa"}',
                                                 headers={"content-type": "application/json"}),
    "chat: NUL byte in text": lambda s: http(s, "POST", "/v1/chat", json={"text": "hello\u0000world"}),
    "chat: lone surrogate in text": lambda s: http(s, "POST", "/v1/chat", content=b'{"text": "hi \\ud800 there"}',
                                                   headers={"content-type": "application/json"}),
    "chat: only control characters": lambda s: http(s, "POST", "/v1/chat", json={"text": "\u0000\u0001\u0002"}),
    "chat: wrong content-type": lambda s: http(s, "POST", "/v1/chat", content=b"text=hello",
                                              headers={"content-type": "application/x-www-form-urlencoded"}),
    "chat: XML body": lambda s: http(s, "POST", "/v1/chat", content=b"<text>hi</text>",
                                    headers={"content-type": "application/xml"}),
    "chat: JSON array": lambda s: http(s, "POST", "/v1/chat", json=[{"text": "hi"}]),
    "chat: text is a number": lambda s: http(s, "POST", "/v1/chat", json={"text": 42}),
    "chat: huge JSON (8 MB)": lambda s: http(s, "POST", "/v1/chat", json={"text": "a" * (8 * MB)}),
    "chat: deeply nested JSON": lambda s: http(s, "POST", "/v1/chat", content=b"[" * 100_000 + b"]" * 100_000,
                                              headers={"content-type": "application/json"}),
    "chat: session id with path": lambda s: http(s, "POST", "/v1/chat",
                                                json={"text": "hi", "session_id": "../../etc/passwd"}),
    "turns: oversize Content-Length": lambda s: raw(s, b"POST /v1/turns HTTP/1.1\r\nHost: x\r\n"
                                                     b"Content-Type: multipart/form-data; boundary=b\r\n"
                                                     b"Content-Length: 4294967296\r\n\r\n", [b"--b\r\n"]),
    "turns: oversize chunked body": lambda s: raw(s, b"POST /v1/turns HTTP/1.1\r\nHost: x\r\n"
                                                   b"Content-Type: multipart/form-data; boundary=b\r\n"
                                                   b"Transfer-Encoding: chunked\r\n\r\n", chunked(40, MB)),
    "chat: oversize chunked JSON": lambda s: raw(s, b"POST /v1/chat HTTP/1.1\r\nHost: x\r\n"
                                                  b"Content-Type: application/json\r\n"
                                                  b"Transfer-Encoding: chunked\r\n\r\n", chunked(8, MB)),
    "turns: multipart without boundary": lambda s: http(s, "POST", "/v1/turns", content=b"--x\r\n",
                                                       headers={"content-type": "multipart/form-data"}),
    "turns: path-like filename, not audio": lambda s: http(
        s, "POST", "/v1/turns", files={"file": ("../../../etc/passwd", b"root:x:0:0", "audio/wav")}),
    "turns: NUL in filename": lambda s: http(
        s, "POST", "/v1/turns", files={"file": ("a\u0000.wav", b"RIFF\0\0\0\0WAVE", "audio/wav")}),
    "turns: wait is not a boolean": lambda s: http(s, "POST", "/v1/turns?wait=perhaps",
                                                  files={"file": ("a.wav", b"RIFF", "audio/wav")}),
    "header injection (CR/LF in a header)": lambda s: raw(s, b"GET /v1/jobs/abc HTTP/1.1\r\nHost: x\r\n"
                                                            b"X-Reply-Text: a\rInjected: yes\r\n\r\n"),
    "request line with raw invalid UTF-8": lambda s: raw(s, b"GET /v1/jobs/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n"),
    "job id with percent-encoded NUL": lambda s: http(s, "GET", "/v1/jobs/abc%00def"),
    "job id of 8000 characters": lambda s: http(s, "GET", "/v1/jobs/" + "a" * 8000),
    "events: negative Last-Event-ID": _get_events("-5"),
    "events: garbage Last-Event-ID": _get_events("'; FLUSHALL; --"),
    "events: negative after=": lambda s: http(s, "GET", f"/v1/jobs/{existing_job(s)}/events?after=-1-0"),
    "audio: negative wait": lambda s: http(s, "GET", f"/v1/jobs/{existing_job(s)}/audio?wait=-1"),
    "chunks: negative seq": lambda s: http(s, "GET", f"/v1/jobs/{existing_job(s)}/chunks/-1"),
    "speech: path-like voice": lambda s: http(s, "POST", "/v1/audio/speech",
                                             json={"model": "tts-1", "input": "hi", "voice": "../../etc/passwd"}),
    "speech: NaN speed": lambda s: http(s, "POST", "/v1/audio/speech", content=b'{"input":"hi","speed":NaN}',
                                       headers={"content-type": "application/json"}),
    "transcription: unknown response_format": lambda s: http(
        s, "POST", "/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF", "audio/wav")},
        data={"response_format": "xml"}),
    "batches: empty JSON inputs": lambda s: http(s, "POST", "/v1/batches", json={"inputs": []}),
    "batches: unknown input ids": lambda s: http(s, "POST", "/v1/batches", json={"inputs": ["nope", "../x"]}),
    "batches: results as xml": lambda s: http(s, "GET", "/v1/batches/abc/results?format=xml"),
    "sessions: id with spaces": lambda s: http(s, "GET", "/v1/sessions/a%20b%20c"),
    "method not allowed": lambda s: http(s, "PUT", "/v1/chat", json={"text": "hi"}),
    "Idempotency-Key with control characters": lambda s: raw(
        s, b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nIdempotency-Key: a\x01b\r\n"
           b"Content-Length: 13\r\n\r\n", [b'{"text":"hi"}']),
}


def _stored(conn: redis.Redis) -> tuple[int, int]:
    n_jobs = sum(1 for k in conn.scan_iter("vq:job:*") if k.count(b":") == 2)
    return n_jobs, sum(int(conn.llen(f"rq:queue:{q}")) for q in queues.all_names())


def test_battery_is_big_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_request_is_a_4xx(stack: Stack, stack_redis: redis.Redis, case: str) -> None:
    before = _stored(stack_redis)
    reply = CASES[case](stack)
    assert 400 <= reply.status < 500, f"{case}: {reply.status} {reply.body[:300]!r}"
    if reply.body.startswith(b"{"):  # our refusals say what was wrong; protocol-level ones come from uvicorn
        error = reply.json()["error"]
        assert error["code"] and error["message"]
    jobs_after, queued_after = _stored(stack_redis)
    assert queued_after <= before[1], f"{case}: something was enqueued"
    # existing_job() writes one record on purpose; nothing else may appear.
    assert jobs_after - before[0] <= (1 if "events" in case or "audio" in case or "chunks" in case else 0)


def test_gateway_still_serves_after_battery(stack: Stack) -> None:
    for case in ("chat: deeply nested JSON", "turns: oversize chunked body", "header injection (CR/LF in a header)"):
        CASES[case](stack)
    reply = http(stack, "GET", "/readyz")
    assert reply.status == 200, reply.body
    assert reply.json()["status"] == "ready"
