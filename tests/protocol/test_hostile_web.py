"""The admin panel attacked over its real HTTPS port (the instance's ``admin`` listener) and the
plain ``http`` listener: CR/LF through every form field, session fixation and forged cookies,
CSRF from another site, clickjacking headers, cookie-only API calls, and slow clients.

tests/unit/test_admin_*.py check the same rules through Flask's test client; these go through
Hypercorn and TLS as a browser (or an attacker's script) does.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse

import pytest
from flask import Flask

from tests.support.instance import PASSWORD, Instance

ADMIN = "root@example.test"
USER = "user@example.test"
CRLF = "\r\nX-Injected: yes\r\nSet-Cookie: injected=1"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
COOKIE = "__Host-mailstead"


@pytest.fixture(scope="module")
def inst(tmp_path_factory, dns_server):
    i = Instance(tmp_path_factory.mktemp("hostile-web"), dns_server.nameserver)
    i.add_user(ADMIN, admin=True)
    i.add_user(USER)
    i.start()
    yield i
    i.stop()


class Browser:
    """One HTTPS client with its own cookie, sending what a browser on ``origin`` would."""

    def __init__(self, inst: Instance, cookie: str = ""):
        self.inst = inst
        self.origin = f"https://127.0.0.1:{inst.ports['admin']}"
        self.cookie = cookie

    def request(self, method: str, path: str, form: dict | None = None, *,
                headers: dict | None = None, body: bytes | None = None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.inst.ports["admin"], timeout=10,
                                           context=self.inst.tls_context())
        hdrs = {"Referer": f"{self.origin}/"}
        if self.cookie:
            hdrs["Cookie"] = f"{COOKIE}={self.cookie}"
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        hdrs.update(headers or {})
        hdrs = {k: v for k, v in hdrs.items() if v is not None}
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        resp.text = resp.read().decode("utf-8", "replace")
        conn.close()
        assert_clean_headers(resp)
        for name, value in resp.getheaders():
            if name.lower() == "set-cookie" and value.startswith(f"{COOKIE}="):
                self.cookie = value.split(";", 1)[0].split("=", 1)[1]
        return resp

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)

    def token(self, path: str = "/login") -> str:
        page = self.get(path)
        if page.status == 302:
            page = self.get("/account/")
        return _CSRF.search(page.text)[1]

    def post(self, path: str, form: dict, *, token: str | None = "", **kwargs):
        form = dict(form)
        if token == "":
            token = self.token()
        if token is not None:
            form["csrf_token"] = token
        return self.request("POST", path, form, **kwargs)

    def login(self, address: str = ADMIN):
        resp = self.post("/login", {"address": address, "password": PASSWORD})
        assert resp.status == 302 and not resp.getheader("Location").endswith("/login"), \
            (resp.status, resp.text[:300])
        return resp

    def signed_in(self) -> bool:
        return self.get("/account/").status == 200


def assert_clean_headers(resp) -> None:
    """No header was injected and none carries a line break (http.client would have split an
    injected CR/LF into a header of its own). A Location may quote the text, %-encoded."""
    names = [name.lower() for name, _ in resp.getheaders()]
    assert "x-injected" not in names
    for name, value in resp.getheaders():
        assert "\r" not in value and "\n" not in value, (name, value)
        if name.lower() == "set-cookie":
            assert "injected" not in value.lower(), value


def state(inst: Instance) -> dict:
    store = inst.accounts
    try:
        users = store.list_users()
        return {
            "domains": store.list_domains(),
            "users": [(u.address, u.is_admin, u.disabled, u.quota_bytes, u.password_changed)
                      for u in users],
            "aliases": store.list_aliases(),
            "app_passwords": [store.list_app_passwords(u.address) for u in users],
            "tokens": [store.list_api_tokens(u.address) for u in users],
            "dkim": sorted(p.name for p in inst.config.dkim_dir.iterdir()),
        }
    finally:
        store.close()


@pytest.fixture
def admin(inst):
    b = Browser(inst)
    b.login(ADMIN)
    return b


# --- header injection ---

FORMS = [
    ("/domains/add", {"domain": "evil.test" + CRLF}),
    ("/domains/add", {"domain": CRLF}),
    ("/mailboxes/add", {"local": "eve" + CRLF, "domain": "example.test",
                        "password": "x" * 12, "password2": "x" * 12}),
    ("/mailboxes/add", {"local": "eve", "domain": "example.test" + CRLF,
                        "password": "x" * 12, "password2": "x" * 12}),
    ("/mailboxes/add", {"local": "eve", "domain": "example.test", "quota": "1G" + CRLF,
                        "password": "x" * 12, "password2": "x" * 12}),
    (f"/mailboxes/{USER}/settings", {"quota": "1G" + CRLF}),
    (f"/mailboxes/{USER}/settings", {"quota": "1\r\nG"}),
    ("/aliases/add", {"local": "info" + CRLF, "domain": "example.test", "destinations": USER}),
    ("/aliases/add", {"local": "info", "domain": "example.test" + CRLF, "destinations": USER}),
    ("/aliases/add", {"local": "info", "domain": "example.test",
                      "destinations": USER + CRLF}),
    ("/aliases/add", {"local": "info", "domain": "example.test",
                      "destinations": f"{USER}\nroot@example.test\rX-Injected: yes"}),
    ("/aliases/delete", {"source": "sales@example.test" + CRLF}),
    ("/account/app-passwords", {"name": "phone" + CRLF}),
    ("/account/tokens", {"name": "script" + CRLF}),
    ("/account/apple-profile", {"device": "iPhone" + CRLF}),
    ("/account/apple-profile", {"device": "iPhone\x00"}),
]


@pytest.mark.parametrize(("path", "form"), FORMS, ids=[f"{p} {sorted(f)}" for p, f in FORMS])
def test_line_breaks_in_form_fields(inst, admin, path, form):
    before = state(inst)
    resp = admin.post(path, form)
    # A form error (shown on the page it redirects to) or a refusal; never a success.
    assert resp.status in (303, 400), (resp.status, resp.text[:300])
    if resp.status == 303:
        page = admin.get(resp.getheader("Location"))
        assert 'class="flash error"' in page.text, page.text[:500]
    assert state(inst) == before


@pytest.mark.parametrize("path", [
    "/domains/evil.test%0d%0aX-Injected:%20yes/delete",
    "/mailboxes/user%40example.test%0d%0aX-Injected:%20yes/settings",
    "/mailboxes/%0d%0aX-Injected:%20yes/delete",
    "/account/app-passwords/1%0d%0a/revoke",
])
def test_line_breaks_in_urls(inst, admin, path):
    before = state(inst)
    resp = admin.post(path, {"quota": "1G"})
    assert resp.status in (303, 400, 404), resp.status
    assert state(inst) == before


@pytest.mark.parametrize("path", ["/%0d%0aX-Injected:%20yes", "/domains/%0aX-Injected:%20yes",
                                  "/x?%0d%0aX-Injected:%20yes", "/%5c%5cevil.test",
                                  "/%2f%2fevil.test/"])
def test_next_page_after_login_cannot_inject_or_leave(inst, path):
    """The page asked for before signing in is where the login returns to: it must stay a
    path of ours and never break the Location header."""
    b = Browser(inst)
    resp = b.get(path)
    assert resp.status == 302 and resp.getheader("Location") == "/login"
    resp = b.post("/login", {"address": ADMIN, "password": PASSWORD})
    assert resp.status == 302
    location = resp.getheader("Location")
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location
    assert b.signed_in()


def test_login_form_fields(inst):
    b = Browser(inst)
    resp = b.post("/login", {"address": ADMIN + CRLF, "password": PASSWORD})
    assert resp.status == 401 and not b.signed_in()


# --- session fixation and forged cookies ---


def signer(inst: Instance):
    """Flask's own session serializer with the panel's key (the local admin can read it)."""
    app = Flask("forge")
    app.secret_key = (inst.data_dir / "admin-secret.key").read_bytes()
    return app.session_interface.get_signing_serializer(app)


def test_cookie_before_login_is_not_the_cookie_after(inst):
    """An attacker who plants a pre-login cookie in the victim's browser gains nothing: the
    login issues a new one, and the planted one stays signed out."""
    attacker = Browser(inst)
    attacker.get("/login")
    planted = attacker.cookie
    assert planted
    victim = Browser(inst, cookie=planted)
    victim.login(USER)
    assert victim.cookie != planted
    assert victim.signed_in()
    assert not Browser(inst, cookie=planted).signed_in()
    assert USER not in json.dumps(signer(inst).loads(planted))


def test_forged_and_foreign_cookies_are_refused(inst):
    alice, bob = Browser(inst), Browser(inst)
    alice.login(ADMIN)
    bob.login(USER)
    s = signer(inst)
    mine, theirs = s.loads(alice.cookie), s.loads(bob.cookie)
    assert mine["user"] == ADMIN and theirs["user"] == USER
    forged = {
        # Signed with another server's key.
        "other key": Flask("x").session_interface.get_signing_serializer(
            _app_with_key(b"k" * 64)).dumps({**mine}),
        # Tampered: the user changed, the signature kept.
        "tampered": _swap_payload(alice.cookie, bob.cookie),
        # A real signature (the key leaked) on the admin's name with the user's session id.
        "other user's sid": s.dumps({**mine, "sid": theirs["sid"]}),
        "user's sid, admin's name": s.dumps({**theirs, "user": ADMIN}),
        "no sid": s.dumps({k: v for k, v in mine.items() if k != "sid"}),
        "made-up sid": s.dumps({**mine, "sid": "x" * 43}),
        "unsigned": "eyJ1c2VyIjoicm9vdEBleGFtcGxlLnRlc3QifQ",
    }
    for what, cookie in forged.items():
        resp = Browser(inst, cookie=cookie).get("/domains/")
        assert resp.status == 302 and resp.getheader("Location") == "/login", what
    assert alice.signed_in() and bob.signed_in()
    # Signed out: the cookie that was valid a moment ago is refused too (a copy of it).
    copy = Browser(inst, cookie=alice.cookie)
    alice.post("/logout", {}, token=alice.token("/account/"))
    assert not copy.signed_in()


def _app_with_key(key: bytes) -> Flask:
    app = Flask("forge")
    app.secret_key = key
    return app


def _swap_payload(signed: str, other: str) -> str:
    """``other``'s payload with ``signed``'s signature."""
    head = other.rsplit(".", 2)[0]
    return head + "." + ".".join(signed.rsplit(".", 2)[1:])


# --- CSRF ---

CROSS_SITE = {"Referer": "https://evil.test/attack.html", "Origin": "https://evil.test"}


def test_cross_site_form_post_is_refused(inst, admin):
    before = state(inst)
    for headers in (CROSS_SITE, {"Referer": None}, {"Referer": None, "Origin": "null"}):
        resp = admin.post("/domains/add", {"domain": "csrf.test"}, token=None, headers=headers)
        assert resp.status == 400
    other = Browser(inst)
    other.login(USER)
    resp = admin.post("/domains/add", {"domain": "csrf.test"}, token=other.token("/account/"))
    assert resp.status == 400  # a token from another session is no token
    assert state(inst) == before


@pytest.mark.parametrize("headers", [
    CROSS_SITE,
    {"Referer": "https://evil.test/"},
    {"Referer": None},
    {"Referer": "http://127.0.0.1/"},  # our host, but not over HTTPS
    {"Referer": "https://127.0.0.1.evil.test/"},
])
def test_valid_token_from_a_foreign_page_is_refused(inst, admin, headers):
    before = state(inst)
    resp = admin.post("/domains/add", {"domain": "csrf.test"}, headers=headers)
    assert resp.status == 400
    assert state(inst) == before


def test_foreign_origin_is_refused_even_with_our_referer(inst, admin):
    """A browser names the page's origin in Origin; a cross-site request that somehow carries
    our token and a same-origin Referer still comes from elsewhere."""
    before = state(inst)
    resp = admin.post("/domains/add", {"domain": "csrf.test"},
                      headers={"Origin": "https://evil.test"})
    assert resp.status == 400
    assert state(inst) == before


def test_same_origin_post_works(inst, admin):
    """The control for the refusals above: the same request from our own page succeeds."""
    resp = admin.post(f"/mailboxes/{USER}/settings", {"quota": "0"},
                      headers={"Origin": admin.origin})
    assert resp.status == 302


# --- clickjacking and other headers ---


def test_clickjacking_headers_on_every_kind_of_answer(inst, admin):
    answers = [Browser(inst).get("/login"), admin.get("/domains/"), admin.get("/account/"),
               admin.post("/domains/add", {"domain": "x.test"}, token=None),  # 400
               Browser(inst).get("/static/style.css")]
    user = Browser(inst)
    user.login(USER)
    answers.append(user.get("/domains/"))  # 403
    for resp in answers:
        csp = resp.getheader("Content-Security-Policy") or ""
        assert resp.getheader("X-Frame-Options") == "DENY", resp.status
        assert "frame-ancestors 'none'" in csp, resp.status
        assert resp.getheader("X-Content-Type-Options") == "nosniff"
        assert resp.getheader("Strict-Transport-Security", "").startswith("max-age=")
    cookie = next(v for k, v in Browser(inst).get("/login").getheaders()
                  if k.lower() == "set-cookie")
    assert {"Secure", "HttpOnly", "SameSite=Lax", "Path=/"} <= {a.strip() for a in
                                                              cookie.split(";")}


# --- the API takes bearer tokens only ---


def test_api_refuses_cookie_only_auth(inst, admin):
    before = state(inst)
    for method, path, body in [("GET", "/api/v1/domains", None),
                               ("POST", "/api/v1/domains", {"domain": "api.test"}),
                               ("DELETE", f"/api/v1/mailboxes/{USER}", None),
                               ("POST", "/api/v1/aliases",
                                {"source": "x@example.test", "destinations": [USER]})]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        resp = admin.request(method, path, body=data, headers=headers)
        assert resp.status == 401, (method, path, resp.status)
        assert resp.getheader("WWW-Authenticate", "").startswith("Bearer")
    # Nor does the session cookie pasted into the Authorization header count. (Once only: a
    # wrong token is a guess, and guesses slow down 127.0.0.1's logins for the next tests.)
    resp = admin.request("POST", "/api/v1/domains", body=b'{"domain": "api.test"}',
                         headers={"Content-Type": "application/json",
                                  "Authorization": f"Bearer {admin.cookie}"})
    assert resp.status == 401
    assert state(inst) == before


# --- slow clients ---


def test_https_connection_that_never_says_hello_is_closed(inst):
    """A TCP connection to 443 that never starts TLS is dropped after the handshake timeout
    (server/web/panel.py TLS_HANDSHAKE_TIMEOUT, 10 s); the plain http listener's header
    timeout is tested in test_web.py with a short setting."""
    from server.web.panel import TLS_HANDSHAKE_TIMEOUT

    with socket.create_connection(("127.0.0.1", inst.ports["admin"]), timeout=20) as sock:
        started = time.monotonic()
        sock.sendall(b"\x16")  # the first byte of a ClientHello, then nothing
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < TLS_HANDSHAKE_TIMEOUT + 3


def test_http_listener_header_injection_in_redirects(inst):
    """Port 80 redirects to HTTPS with the request's path: CR/LF in it cannot become a header."""
    for target in (b"/%0d%0aX-Injected:%20yes", b"/a%0aSet-Cookie:%20injected=1"):
        with socket.create_connection(("127.0.0.1", inst.ports["http"]), timeout=10) as sock:
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: mail.example.test\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        head = data.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 301"), head
        for line in head.split(b"\r\n")[1:]:
            assert b"\n" not in line and b"\r" not in line
            assert not line.lower().startswith((b"x-injected", b"set-cookie"))


class PanelThread:
    """The real panel app behind a PanelListener in this process, with Hypercorn's timeouts
    short enough to test (the daemon's are 30 s between requests and 60 s per read)."""

    def __init__(self, inst: Instance, *, keep_alive: float, read: float):
        from admin import Services, create_app
        from server.config import Listen
        from server.tlscert import server_context
        from server.web.panel import PanelListener

        self.app = create_app(inst.config, Services(accounts=inst.accounts))
        tls = inst.data_dir / "tls"
        self.listener = PanelListener("admin", Listen("127.0.0.1", 0), self.app,
                                      server_context(tls / "cert.pem", tls / "key.pem"))
        self.listener.hconfig.keep_alive_timeout = keep_alive
        self.listener.hconfig.read_timeout = read
        self.listener.body_timeout = 2 * read
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.listener.start(), self.loop).result(10)
        self.port = self.listener.servers[0].sockets[0].getsockname()[1]

    def connect(self) -> ssl.SSLSocket:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return ctx.wrap_socket(sock, server_hostname="mail.example.test")

    async def _stop(self) -> None:
        # asyncio.Server is not thread-safe: close it on the loop's own thread.
        self.listener.stop_accepting()
        await self.listener.drain(1)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def slow_panel(tmp_path, dns_server):
    from tests.support import panel

    inst = panel.instance(tmp_path, dns_server.nameserver)
    p = PanelThread(inst, keep_alive=1, read=1)
    yield p
    p.stop()


def _trickle_until_closed(sock, data: bytes, every: float, limit: float) -> float:
    """Send ``data`` a byte at a time; seconds until the server hung up (or ``limit``)."""
    started = time.monotonic()
    sock.settimeout(every)
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(4096) == b"":
                break
        except TimeoutError:
            pass
        except (OSError, ssl.SSLError):
            break
        if time.monotonic() - started > limit:
            break
    return time.monotonic() - started


def test_panel_slowloris_headers_closed(slow_panel):
    """Headers a byte every 0.3 s: never silent for the 1 s read timeout, but the request
    never starts, so the keep-alive timeout (1 s here) ends it."""
    with slow_panel.connect() as sock:
        took = _trickle_until_closed(sock, b"GET /login HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 50,
                                     0.3, 8)
    assert took < 4


def test_panel_slow_body_closed(slow_panel):
    head = b"POST /login HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n" \
           b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
    with slow_panel.connect() as sock:
        sock.sendall(head)
        took = _trickle_until_closed(sock, b"a" * 500, 0.3, 4)
    assert took < 3.5
