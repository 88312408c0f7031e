"""The web listeners over real loopback sockets: plain HTTP and HTTPS, started in-process on
free ports with their own event loop in a thread."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
import time

import argon2
import pytest

from server.accounts import AccountStore
from server.config import Listen, parse_config, render_config
from server.tlscert import make_self_signed, server_context
from server.web import WebContext, WebListener
from tests.conftest import require_tool

HOSTNAME = "mail.example.test"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEY_AUTH = f"{TOKEN}.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


class Responder:
    def __init__(self):
        self.asked: list[str] = []

    def http01(self, token: str) -> str | None:
        self.asked.append(token)
        return KEY_AUTH if token == TOKEN else None


class Web:
    """An ``http`` and an ``admin`` listener sharing one context, on 127.0.0.1."""

    def __init__(self, tmp_path, **limits):
        self.config = parse_config(render_config(HOSTNAME, tmp_path, {}),
                                   tmp_path / "mailstead.toml")
        hasher = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
        self.accounts = AccountStore(tmp_path / "db.sqlite3", tmp_path / "mail", hasher=hasher)
        self.accounts.initialise()
        self.accounts.add_domain("example.test")
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        make_self_signed(HOSTNAME, cert, key)
        self.responder = Responder()
        self.ctx = WebContext(self.config, self.accounts, self.responder)
        self.http = WebListener("http", Listen("127.0.0.1", 0), self.ctx, None, **limits)
        self.https = WebListener("admin", Listen("127.0.0.1", 0), self.ctx,
                                 server_context(cert, key), **limits)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self.http.start())
        self.run(self.https.start())
        self.http_port = self.http.server.sockets[0].getsockname()[1]
        self.https_port = self.https.server.sockets[0].getsockname()[1]

    def run(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.run(self._drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.accounts.close()

    async def _drain(self):
        # asyncio.Server is not thread-safe: close it on the loop's own thread.
        for listener in (self.http, self.https):
            listener.stop_accepting()
        await asyncio.gather(self.http.drain(1), self.https.drain(1))

    def connect(self, tls=False) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.https_port if tls else self.http_port),
                                        timeout=10)
        if tls:
            client = ssl.create_default_context()
            client.check_hostname = False
            client.verify_mode = ssl.CERT_NONE
            sock = client.wrap_socket(sock, server_hostname=HOSTNAME)
        return sock


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    w = Web(tmp_path_factory.mktemp("web"))
    yield w
    w.stop()


@pytest.fixture
def fresh(tmp_path):
    made = []

    def make(**limits):
        made.append(Web(tmp_path, **limits))
        return made[-1]
    yield make
    for w in made:
        w.stop()


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body


def read_reply(sock: socket.socket, head_only=False) -> Reply:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, f"closed before the end of the head: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 ")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        assert name.lower() not in headers, f"repeated {name}"
        headers[name.lower()] = value
    length = 0 if head_only else int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "closed before the end of the body"
        body += chunk
    return Reply(int(lines[0].split()[1]), headers, body)


def closed(sock: socket.socket, within=5.0) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True


def exchange(web, data: bytes, tls=False, head_only=False) -> Reply:
    with web.connect(tls) as sock:
        sock.sendall(data)
        reply = read_reply(sock, head_only)
        assert closed(sock)  # Connection: close, and it is
    for name in ("date", "server", "content-length", "connection"):
        assert name in reply.headers
    assert reply.headers["server"] == "mailstead" and reply.headers["connection"] == "close"
    return reply


def get(web, path, host=HOSTNAME, tls=False, method="GET", extra=b"") -> Reply:
    data = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n".encode() + extra + b"\r\n"
    return exchange(web, data, tls, head_only=method == "HEAD")


# --- what is served ---


@pytest.mark.parametrize("tls", [False, True])
def test_challenge_served(web, tls):
    reply = get(web, f"/.well-known/acme-challenge/{TOKEN}", host="example.test", tls=tls)
    assert reply.status == 200 and reply.body == KEY_AUTH.encode()
    assert reply.headers["content-type"] == "text/plain"
    assert reply.headers["cache-control"] == "no-store"
    assert ("strict-transport-security" in reply.headers) == tls


@pytest.mark.parametrize("tls", [False, True])
def test_challenge_unknown_and_bad_tokens(web, tls):
    web.responder.asked.clear()
    for token in ("nosuchtoken", "a.b", "..%2F..%2Fetc", "a+b", "a=", f"{TOKEN}/x"):
        reply = get(web, f"/.well-known/acme-challenge/{token}", tls=tls)
        assert reply.status == 404, token
    assert web.responder.asked == ["nosuchtoken"]


def test_mta_sts_policy_over_https_only(web):
    reply = get(web, "/.well-known/mta-sts.txt", host="mta-sts.example.test", tls=True)
    assert reply.status == 200
    assert reply.body == (b"version: STSv1\r\nmode: testing\r\nmx: mail.example.test\r\n"
                          b"max_age: 604800\r\n")
    assert reply.headers["content-type"] == "text/plain"
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["strict-transport-security"] == "max-age=31536000"
    assert get(web, "/.well-known/mta-sts.txt", host="mta-sts.foreign.test",
               tls=True).status == 404
    assert get(web, "/.well-known/mta-sts.txt", host=HOSTNAME, tls=True).status == 404
    reply = get(web, "/.well-known/mta-sts.txt", host="mta-sts.example.test")
    assert reply.status == 301
    assert reply.headers["location"] == "https://mta-sts.example.test/.well-known/mta-sts.txt"


def test_mta_sts_mode_update(fresh):
    web = fresh()
    web.ctx.update_config(web.config, mta_sts_mode="enforce", mta_sts_max_age=86400)
    reply = get(web, "/.well-known/mta-sts.txt", host="mta-sts.example.test", tls=True)
    assert b"mode: enforce\r\n" in reply.body and b"max_age: 86400\r\n" in reply.body


def test_redirects_to_https_on_our_names_only(web):
    reply = get(web, "/some/where?q=1", host="www.example.test")
    assert reply.status == 301
    assert reply.headers["location"] == "https://www.example.test/some/where?q=1"
    assert "strict-transport-security" not in reply.headers  # RFC 6797 §7.2
    for host in ("evil.test", "example.test.evil.test", "127.0.0.1", "evil.test:443"):
        reply = get(web, "/x", host=host)
        assert reply.headers["location"] == "https://mail.example.test/x", host
    # Absolute-form targets name the host themselves (RFC 9112 §3.2.2); same rule.
    reply = exchange(web, b"GET http://evil.test/y HTTP/1.1\r\nHost: example.test\r\n\r\n")
    assert reply.headers["location"] == "https://mail.example.test/y"
    reply = exchange(web, b"GET /old HTTP/1.0\r\n\r\n")
    assert reply.status == 301 and reply.headers["location"] == "https://mail.example.test/old"


def test_https_unknown_paths_404(web):
    for path in ("/", "/admin/", "/.well-known/security.txt"):
        reply = get(web, path, tls=True)
        assert reply.status == 404 and reply.body == b"Not Found\n"
        assert reply.headers["strict-transport-security"] == "max-age=31536000"


@pytest.mark.parametrize("tls", [False, True])
def test_head(web, tls):
    path = f"/.well-known/acme-challenge/{TOKEN}"
    reply = get(web, path, tls=tls, method="HEAD")
    assert reply.status == 200 and reply.body == b""
    assert reply.headers["content-length"] == str(len(KEY_AUTH))
    assert get(web, "/nothing", tls=tls, method="HEAD").body == b""


@pytest.mark.parametrize("tls", [False, True])
def test_other_methods_405(web, tls):
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PROPFIND"):
        reply = get(web, "/", tls=tls, method=method)
        assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD"


# --- hostile input ---


def test_oversize_head(web):
    reply = exchange(web, b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Filler: " + b"a" * 9000 +
                     b"\r\n\r\n")
    assert reply.status == 431
    reply = exchange(web, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", tls=True)
    assert reply.status == 414


def test_oversize_head_without_end(web):
    """The client keeps sending; we answer at 8 KiB and the answer still reaches it."""
    with web.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 3000)
        assert read_reply(sock).status == 431


@pytest.mark.parametrize("tls", [False, True])
def test_body_refused(web, tls):
    body = b"x" * 100_000
    reply = exchange(web, b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + body, tls=tls)
    assert reply.status == 413
    reply = exchange(web, b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n")
    assert reply.status == 413


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello, more or less
])
def test_malformed_requests_400(web, data):
    assert exchange(web, data).status == 400


def test_http2_preface_505(web):
    reply = exchange(web, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert reply.status == 505


def test_plain_http_to_the_https_port(web):
    with socket.create_connection(("127.0.0.1", web.https_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert closed(sock, within=12)


def test_slowloris_closed_after_timeout(fresh):
    web = fresh(header_timeout=1)
    with web.connect() as slow, web.connect() as silent, web.connect(tls=True) as slow_tls:
        started = time.monotonic()
        for sock in (slow, slow_tls):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        time.sleep(0.5)
        slow.sendall(b"X-A: b\r\n")  # trickling does not reset the clock
        assert read_reply(slow).status == 408
        assert read_reply(slow_tls).status == 408
        assert 0.9 < time.monotonic() - started < 3
        assert closed(slow) and closed(slow_tls)
        assert closed(silent)  # never said a word: closed without an answer


def test_per_ip_cap(fresh):
    web = fresh(max_connections_per_ip=2)
    with web.connect() as a, web.connect() as b:
        time.sleep(0.2)  # both accepted and counted
        with web.connect() as c:
            reply = read_reply(c)
            assert reply.status == 503 and reply.headers["retry-after"] == "10"
            assert closed(c)
        for sock in (a, b):
            sock.sendall(b"GET /x HTTP/1.0\r\n\r\n")
            assert read_reply(sock).status == 301
    time.sleep(0.2)
    assert get(web, "/y").status == 301  # the slots are free again
    assert web.http.per_ip == {} and not web.http.connections


def test_total_cap(fresh):
    web = fresh(max_connections=1)
    with web.connect(tls=True):
        time.sleep(0.2)
        with web.connect(tls=True) as b:
            reply = read_reply(b)
            assert reply.status == 503
            assert reply.headers["strict-transport-security"] == "max-age=31536000"


async def stop_and_drain(listener, grace):
    listener.stop_accepting()
    await listener.drain(grace)


def test_drain_closes_idle_connections(fresh):
    web = fresh()
    with web.connect() as idle:
        time.sleep(0.2)
        started = time.monotonic()
        web.run(stop_and_drain(web.http, 5))
        assert time.monotonic() - started < 2
        assert closed(idle)


def test_requests_are_logged_without_queries(web, caplog):
    with caplog.at_level("INFO", logger="mailstead.web"):
        get(web, "/login?password=hunter2")
    lines = [r.getMessage() for r in caplog.records if "/login" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith("GET /login 301"), lines
    assert "hunter2" not in caplog.text


# --- a real client ---


def test_curl(web):
    curl = require_tool("curl")
    out = subprocess.run(
        [curl, "-sS", "-i", "--max-time", "10",
         f"http://127.0.0.1:{web.http_port}/.well-known/acme-challenge/{TOKEN}"],
        capture_output=True, check=True).stdout
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(KEY_AUTH.encode())
    out = subprocess.run(
        [curl, "-sS", "-i", "--max-time", "10", "-H", "Host: www.example.test",
         f"http://127.0.0.1:{web.http_port}/a?b=c"],
        capture_output=True, check=True).stdout
    assert b"\r\nLocation: https://www.example.test/a?b=c\r\n" in out
    out = subprocess.run(
        [curl, "-sS", "-k", "--max-time", "10", "--resolve",
         f"mta-sts.example.test:{web.https_port}:127.0.0.1",
         f"https://mta-sts.example.test:{web.https_port}/.well-known/mta-sts.txt"],
        capture_output=True, check=True).stdout
    assert out.startswith(b"version: STSv1\r\nmode: testing\r\n")
