"""A plain-HTTP stand-in on loopback that records requests and answers what a test sets.

    with HTTPStub() as stub:
        stub.answer(200, b'{"score": 1.0, "action": "no action"}')
        ... client pointed at stub.url ...
        assert stub.requests[0].path == "/checkv2"

For the error paths a real server is hard to drive into (a 500, a reply that never comes, a
malformed body); the happy paths are tested against the real program (tests/e2e).
"""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import dataclass


@dataclass
class Request:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else every answer waits 40 ms for a delayed ACK

    def do_POST(self):
        stub = self.server.stub
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        stub.requests.append(Request("POST", self.path, list(self.headers.items()), body))
        status, reason, payload, delay = stub.reply
        if delay:
            time.sleep(delay)
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out and hung up on a delayed answer: expected here


class HTTPStub:
    __test__ = False

    def __init__(self):
        self.requests: list[Request] = []
        self.reply: tuple[int, str | None, bytes, float] = (200, None, b"{}", 0.0)
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.stub = self
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, status: int, body: bytes = b"{}", reason: str | None = None,
               delay: float = 0.0) -> None:
        self.reply = (status, reason, body, delay)

    def __enter__(self) -> HTTPStub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
