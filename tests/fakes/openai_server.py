"""A real local HTTP server speaking OpenAI chat completions (JSON and SSE streaming), with scripted failures.

Each POST to /v1/chat/completions takes the next step of the script, then the
default step once the script is used up:

    with FakeOpenAI(script=[Fail(429, retry_after="1"), Reply("Hello there.")]) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0)
        ...
        fake.chat_requests  # what the server received, with monotonic arrival times

`rotate=[Fail(429, retry_after="1"), Reply()]` answers every other call with 429
(after the script, instead of the default). `Fail(500)` as default gives "always 500";
`Reply(delay_s=5)` a server slower than the client's timeout; `Reply(break_after=3)` a stream cut after three deltas;
`Reply("", tool_calls=[("end_call", "{}")])` a reply that calls a tool.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    text: str = "Hello! How can I help you today?"
    deltas: list[str] | None = None  # how the text is split into stream chunks; default: word by word
    usage: bool = True  # send the usage chunk when the client asks for it (stream_options.include_usage)
    delay_s: float = 0.0  # before the response starts (the time to first token)
    delta_delay_s: float = 0.0  # between stream chunks
    break_after: int | None = None  # drop the connection after this many deltas
    finish_reason: str = "stop"
    # Calls streamed as OpenAI does: (name, arguments JSON); the arguments arrive in two pieces.
    tool_calls: list[tuple[str, str]] | None = None

    def pieces(self) -> list[str]:
        return self.deltas if self.deltas is not None else re.findall(r"\s*\S+", self.text)


@dataclass
class Fail:
    status: int = 500
    retry_after: str | None = None  # seconds or an HTTP-date
    message: str = "scripted failure"
    delay_s: float = 0.0


Step = Reply | Fail


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() on arrival
    step: Step | None = None


@dataclass
class FakeOpenAI:
    script: list[Step] = field(default_factory=list)
    default: Step = field(default_factory=Reply)
    rotate: list[Step] | None = None  # after the script: these steps in turn, instead of the default
    model: str = "fake-model"
    api_key: str | None = None  # when set, other bearer keys get 401
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.script = list(self.script)
        self._lock = threading.Lock()
        self._turn = 0
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def next_step(self) -> Step:
        with self._lock:
            if self.script:
                return self.script.pop(0)
            if self.rotate:
                step = self.rotate[self._turn % len(self.rotate)]
                self._turn += 1
                return step
            return self.default

    def record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def sleep(self, seconds: float) -> None:
        """A sleep that ends early when the server stops, so shutdown never waits on a slow step."""
        if seconds > 0:
            self._stop.wait(seconds)

    def __enter__(self) -> FakeOpenAI:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-openai",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client killed mid-request is no news
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers: the client pools connections

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.fake.record(Recorded("GET", self.path, dict(self.headers), None, time.monotonic()))
        if not self._authorised():
            return
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": self.fake.model, "object": "model",
                                                          "owned_by": "fake"}]})
        else:
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        rec = Recorded("POST", self.path, dict(self.headers), body, time.monotonic())
        self.fake.record(rec)
        if not self._authorised():
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        step = rec.step = self.fake.next_step()
        self.fake.sleep(step.delay_s)
        try:
            if isinstance(step, Fail):
                self._fail(step)
            elif body.get("stream"):
                self._stream(step, body)
            else:
                self._complete(step, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (its timeout): nothing to do

    def _authorised(self) -> bool:
        key = self.fake.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._json(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
        return False

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, step: Fail) -> None:
        kind = "rate_limit_exceeded" if step.status == 429 else "server_error" if step.status >= 500 else (
            "invalid_request_error")
        headers = {"Retry-After": step.retry_after} if step.retry_after is not None else {}
        self._json(step.status, {"error": {"message": step.message, "type": kind, "code": kind}}, headers)

    def _usage(self, body: dict[str, Any], pieces: list[str]) -> dict[str, int]:
        prompt = sum(len(str(m.get("content", "")).split()) + 4 for m in body.get("messages", []))
        return {"prompt_tokens": prompt, "completion_tokens": len(pieces), "total_tokens": prompt + len(pieces)}

    def _complete(self, step: Reply, body: dict[str, Any]) -> None:
        pieces = step.pieces()
        self._json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or self.fake.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                         "finish_reason": step.finish_reason}],
            "usage": self._usage(body, pieces),
        })

    def _stream(self, step: Reply, body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model") or self.fake.model}
        pieces = step.pieces()
        self._event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None}]})
        for n, piece in enumerate(pieces):
            if step.break_after is not None and n >= step.break_after:
                self._drop()
                return
            self._event({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            self.fake.sleep(step.delta_delay_s)
        for index, (name, arguments) in enumerate(step.tool_calls or []):
            half = len(arguments) // 2
            first = {"index": index, "id": f"call_{index}", "type": "function",
                     "function": {"name": name, "arguments": arguments[:half]}}
            self._event({**base, "choices": [{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}]})
            rest = {"index": index, "function": {"arguments": arguments[half:]}}
            self._event({**base, "choices": [{"index": 0, "delta": {"tool_calls": [rest]}, "finish_reason": None}]})
        finish = "tool_calls" if step.tool_calls else step.finish_reason
        self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if step.usage and (body.get("stream_options") or {}).get("include_usage"):
            self._event({**base, "choices": [], "usage": self._usage(body, pieces)})
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _event(self, payload: dict[str, Any]) -> None:
        self._chunk(f"data: {json.dumps(payload)}\n\n".encode())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _drop(self) -> None:
        """Cut the connection mid-body, as a crashed upstream or proxy would."""
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True
