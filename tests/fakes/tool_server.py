"""A real local HTTP server standing in for a tenant's tool endpoint, answering by path:

    /ok           200 JSON {"echo": <the request's arguments>, "status": "shipped"}
    /fail         500 JSON {"error": "database down"}
    /slow         200 JSON after `slow_s` seconds (the connection is held open meanwhile)
    /trickle      200 headers after 0.8 s, then the JSON body a byte every 0.7 s (each wait shorter than a
                  1 s timeout, the whole much longer)
    /big          200 with a JSON body of `big_bytes` bytes
    /text         200 text/plain (not JSON)
    /empty        204 with no body
    /busy-once    503 Retry-After: 0 the first time, then 200 JSON {"tries": n}
    /busy-long    503 Retry-After: 5 (too long for a caller on the line)

Every request is recorded (path, headers, raw body, monotonic arrival time):

    with ToolServer() as server:
        tools.call(tool_at(server.url("/ok")), ...)
        server.requests[-1].body
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class ToolServer:
    slow_s: float = 3.0
    big_bytes: int = 200_000
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def record(self, received: Received) -> int:
        """Keeps the request; returns how many requests this path has had, this one included."""
        with self._lock:
            self.requests.append(received)
            return sum(r.path == received.path for r in self.requests)

    def sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)  # ends early at shutdown, so stopping never waits on /slow

    def __enter__(self) -> ToolServer:
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True,
                                        name="tool-server")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    owner: ToolServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
        count = self.owner.record(received)
        try:
            arguments = json.loads(body).get("arguments")
        except ValueError:
            arguments = None
        path = self.path
        if path == "/ok":
            self._send(200, {"echo": arguments, "status": "shipped"})
        elif path == "/fail":
            self._send(500, {"error": "database down"})
        elif path == "/slow":
            self.owner.sleep(self.owner.slow_s)
            self._send(200, {"late": True})
        elif path == "/trickle":
            self._trickle(b'{"late": true}', 0.8, 0.7)
        elif path == "/big":
            self._send_raw(200, b'{"pad": "' + b"x" * self.owner.big_bytes + b'"}', "application/json")
        elif path == "/text":
            self._send_raw(200, b"order 1234 shipped", "text/plain")
        elif path == "/empty":
            self._send_raw(204, b"", None)
        elif path == "/busy-once" and count == 1:
            self._send(503, {"error": "busy"}, {"Retry-After": "0"})
        elif path == "/busy-once":
            self._send(200, {"tries": count})
        elif path == "/busy-long":
            self._send(503, {"error": "busy"}, {"Retry-After": "5"})
        else:
            self._send(404, {"error": f"no route {path}"})

    def _trickle(self, data: bytes, first_s: float, gap_s: float) -> None:
        self.owner.sleep(first_s)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for byte in data:
                self.owner.sleep(gap_s)
                self.wfile.write(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_raw(self, status: int, data: bytes, content_type: str | None,
                  headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if status != 204:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the caller gave up (a timeout test): nothing to answer
