"""A real HTTP server standing in for a tenant's webhook receiver: it answers from a script (status, headers,
delay), records every request it got, and checks each signature with `shared.signing.verify`. Given an
`ssl.SSLContext` it serves https."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shared import signing


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # longer than the sender's timeout: the sender gives up first
    body: bytes = b""


@dataclass
class Received:
    at: float  # time.monotonic()
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    answered: int


class Receiver:
    """Answers requests with `script` in order, then with `then` for every later one."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.script: list[Answer] = []
        self.then = Answer()
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.url = ""

    def plan(self, *answers: Answer, then: Answer | None = None) -> None:
        with self.lock:
            self.script = list(answers)
            self.then = then or Answer()

    def next_answer(self) -> Answer:
        with self.lock:
            return self.script.pop(0) if self.script else self.then

    def verified(self, request: Received, secret: str | None = None) -> bool:
        value = request.headers.get(signing.HEADER.lower(), "")
        return signing.verify(secret or self.secret or "", request.body, value)


@contextmanager
def receiving(secret: str | None = None, tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    receiver = Receiver(secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            answer = receiver.next_answer()
            with receiver.lock:
                receiver.requests.append(Received(time.monotonic(), self.path,
                                                  {k.lower(): v for k, v in self.headers.items()}, body,
                                                  answer.status))
            if answer.delay_s:
                time.sleep(answer.delay_s)
            try:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the sender timed out and hung up, as it should

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:  # a handshake the client gives up on is an OSError the server shrugs off
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}/hooks"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
