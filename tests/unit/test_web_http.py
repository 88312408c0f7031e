"""The web listeners without sockets: the request parser (server/web/message.py), the router
(server/web/routes.py), the MTA-STS policy text and the listener context."""

from __future__ import annotations

from http import HTTPStatus
from types import SimpleNamespace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from server.config import Listen
from server.web import WebContext
from server.web.message import (
    MAX_HEAD,
    HTTPError,
    Response,
    head_end,
    parse_host,
    parse_request,
    serialize,
)
from server.web.mtasts import policy_text
from server.web.routes import is_ours, route

HOSTNAME = "mail.example.test"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


class Responder:
    def __init__(self, known: dict[str, str]):
        self.known = known
        self.asked: list[str] = []

    def http01(self, token: str) -> str | None:
        self.asked.append(token)
        return self.known.get(token)


def site(**kw):
    values = dict(hostname=HOSTNAME, https_port=443, mta_sts_mode="testing",
                  mta_sts_max_age=604800, responder=Responder({TOKEN: f"{TOKEN}.thumb"}),
                  domains=lambda: ["example.test", "other.test"])
    values.update(kw)
    return SimpleNamespace(**values)


def req(text: str):
    return parse_request(text.replace("\n", "\r\n").encode())


def get(path: str, host: str | None = "mail.example.test", method="GET", extra=""):
    head = f"{method} {path} HTTP/1.1\n" + (f"Host: {host}\n" if host else "") + extra + "\n"
    return req(head)


def bad(data: bytes) -> HTTPStatus:
    with pytest.raises(HTTPError) as err:
        parse_request(data)
    return err.value.status


# --- finding the head ---


def test_head_end():
    assert head_end(b"GET / HTTP/1.1\r\nHost: a\r\n") is None
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest"
    assert data[head_end(data):] == b"rest"
    assert head_end(b"GET / HTTP/1.0\n\n") == 16  # bare LF lines (RFC 9112 §2.2 MAY)
    # Empty lines before the request line are skipped, not taken for the end of the head.
    assert head_end(b"\r\n\r\nGET / HTTP/1.0\r\n\r\n") == 22


def test_head_limits():
    with pytest.raises(HTTPError) as err:
        head_end(b"GET /" + b"a" * MAX_HEAD)
    assert err.value.status == HTTPStatus.REQUEST_URI_TOO_LONG
    with pytest.raises(HTTPError) as err:
        head_end(b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 2000)
    assert err.value.status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    # A complete head that ends past the limit is refused too.
    with pytest.raises(HTTPError):
        head_end(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n")
    big = b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD - 100) + b"\r\n\r\n"
    assert head_end(big) == len(big)


# --- parsing ---


def test_parse_origin_form():
    r = req("GET /a/b?token=secret HTTP/1.1\nHost: Mail.Example.TEST.:8080\nX-Y:  z \n\n")
    assert (r.method, r.path, r.query, r.version) == ("GET", "/a/b", "token=secret", (1, 1))
    assert r.host == "mail.example.test"
    assert ("x-y", "z") in r.headers
    assert not r.has_body


def test_parse_absolute_form_takes_its_host():
    # RFC 9112 §3.2.2: the target's authority wins over the Host header.
    r = req("GET http://example.test/x?y HTTP/1.1\nHost: evil.test\n\n")
    assert (r.host, r.path, r.query) == ("example.test", "/x", "y")
    assert req("GET https://example.test HTTP/1.1\nHost: a\n\n").path == "/"


def test_parse_http10_without_host():
    r = req("GET / HTTP/1.0\n\n")
    assert r.host is None and r.version == (1, 0)


def test_parse_other_methods_and_forms():
    assert req("OPTIONS * HTTP/1.1\nHost: a\n\n").path == "*"
    assert req("CONNECT example.test:443 HTTP/1.1\nHost: a\n\n").method == "CONNECT"
    assert req("POST / HTTP/1.1\nHost: a\nContent-Length: 5\n\n").content_length == 5
    assert req("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n").has_body


@pytest.mark.parametrize("data, status", [
    (b"\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET /\r\n\r\n", HTTPStatus.BAD_REQUEST),  # HTTP/0.9
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTPS/1.1\r\nHost: a\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/11\r\nHost: a\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"PRI * HTTP/2.0\r\n\r\n", HTTPStatus.HTTP_VERSION_NOT_SUPPORTED),
    (b"GET / HTTP/1.1\r\n\r\n", HTTPStatus.BAD_REQUEST),  # RFC 9112 §3.2: Host required
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: [zz::1]\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", HTTPStatus.BAD_REQUEST),  # RFC 9112 §5.1
    (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", HTTPStatus.BAD_REQUEST),  # §5.2
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", HTTPStatus.BAD_REQUEST),  # bare CR
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
     HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     HTTPStatus.BAD_REQUEST),  # RFC 9112 §6.3: the smuggling pair
    (b"GET example.test HTTP/1.1\r\nHost: a\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET http://[::1/ HTTP/1.1\r\nHost: a\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 70 + b"\r\n",
     HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE),
])
def test_parse_refuses(data, status):
    assert bad(data) == status


def test_parse_host():
    assert parse_host("") is None
    assert parse_host("MTA-STS.Example.Test:443") == "mta-sts.example.test"
    assert parse_host("192.0.2.1:80") == "192.0.2.1"
    assert parse_host("[::1]:8080") == "[::1]"
    for value in ("a..b", ".", "-a", "a b", "a:b", "exa\u00e9mple"):
        with pytest.raises(HTTPError):
            parse_host(value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
@example(b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n")
@example(b"GET http://\xff/ HTTP/1.1\r\n\r\n")
def test_parser_only_raises_http_errors(data):
    """Whatever arrives, the parser answers with a request or an HTTPError (never a crash)."""
    try:
        head_end(data)
        parse_request(data)
    except HTTPError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=80),
       st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40))
def test_redirect_never_leaves_our_names(target, host):
    data = f"GET /{target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    try:
        resp = route(parse_request(data), site(), tls=False)
    except HTTPError:
        return
    location = dict(resp.headers)["Location"]
    authority = location.removeprefix("https://").split("/")[0]
    assert is_ours(authority, HOSTNAME, ["example.test", "other.test"]), location


# --- serialising ---


def test_serialize():
    data = serialize(Response(HTTPStatus.OK, b"hi", headers=[("X-A", "b")]), now=0)
    head, body = data.split(b"\r\n\r\n")
    assert body == b"hi"
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert "Date: Thu, 01 Jan 1970 00:00:00 GMT" in lines
    assert {"Server: mailstead", "Content-Length: 2", "Connection: close", "X-A: b"} <= set(lines)
    assert not any(line.startswith("Strict-Transport-Security") for line in lines)
    assert b"Strict-Transport-Security: max-age=31536000\r\n" in serialize(
        Response(HTTPStatus.OK), hsts=True)


def test_serialize_head_keeps_length():
    data = serialize(Response(HTTPStatus.OK, b"hello"), head_only=True)
    assert data.endswith(b"\r\n\r\n") and b"Content-Length: 5\r\n" in data


def test_serialize_refuses_header_injection():
    with pytest.raises(ValueError):
        serialize(Response(HTTPStatus.OK, headers=[("Location", "/a\r\nSet-Cookie: x")]))


# --- routing ---


def test_acme_challenge_on_both():
    for tls in (False, True):
        resp = route(get(f"/.well-known/acme-challenge/{TOKEN}"), site(), tls=tls)
        assert resp.status == HTTPStatus.OK and resp.body == f"{TOKEN}.thumb".encode()
        assert resp.content_type == "text/plain"
        assert ("Cache-Control", "no-store") in resp.headers


def test_acme_unknown_and_bad_tokens():
    s = site()
    for token in ("unknown", "a.b", "..", "a%2Fb", "a=", "", "a/b", "x" * 300):
        resp = route(get(f"/.well-known/acme-challenge/{token}"), s, tls=False)
        assert resp.status == HTTPStatus.NOT_FOUND, token
    assert s.responder.asked == ["unknown"]  # malformed tokens never reach the responder
    assert route(get("/.well-known/acme-challenge/x"), site(responder=None),
                 tls=False).status == HTTPStatus.NOT_FOUND


def test_mta_sts_only_over_https_for_our_domains():
    r = get("/.well-known/mta-sts.txt", host="mta-sts.example.test")
    resp = route(r, site(), tls=True)
    assert resp.status == HTTPStatus.OK
    assert resp.body == (b"version: STSv1\r\nmode: testing\r\nmx: mail.example.test\r\n"
                         b"max_age: 604800\r\n")
    assert ("Cache-Control", "no-store") in resp.headers
    resp = route(r, site(mta_sts_mode="enforce", mta_sts_max_age=86400), tls=True)
    assert b"mode: enforce\r\n" in resp.body and b"max_age: 86400\r\n" in resp.body
    for host in ("mta-sts.foreign.test", "example.test", "mail.example.test",
                 "mta-sts.sub.example.test", "x.mta-sts.example.test"):
        resp = route(get("/.well-known/mta-sts.txt", host=host), site(), tls=True)
        assert resp.status == HTTPStatus.NOT_FOUND, host
    resp = route(r, site(), tls=False)  # RFC 8461 §3.3: HTTPS only
    assert resp.status == HTTPStatus.MOVED_PERMANENTLY
    assert dict(resp.headers)["Location"] == "https://mta-sts.example.test/.well-known/mta-sts.txt"


@pytest.mark.parametrize("host, location", [
    ("mail.example.test", "https://mail.example.test/p?q=1"),
    ("example.test:80", "https://example.test/p?q=1"),
    ("www.other.test", "https://www.other.test/p?q=1"),
    ("evil.test", "https://mail.example.test/p?q=1"),
    ("example.test.evil.test", "https://mail.example.test/p?q=1"),
    ("notexample.test", "https://mail.example.test/p?q=1"),
    ("192.0.2.1", "https://mail.example.test/p?q=1"),
    (None, "https://mail.example.test/p?q=1"),
])
def test_redirect_target(host, location):
    head = "GET /p?q=1 HTTP/1.0\n" + (f"Host: {host}\n" if host else "") + "\n"
    resp = route(req(head), site(), tls=False)
    assert resp.status == HTTPStatus.MOVED_PERMANENTLY
    assert dict(resp.headers)["Location"] == location


def test_redirect_to_the_dev_port():
    resp = route(get("/"), site(https_port=8443), tls=False)
    assert dict(resp.headers)["Location"] == "https://mail.example.test:8443/"


def test_https_unknown_paths_404():
    for path in ("/", "/admin", "/.well-known/mta-sts.txt/x"):
        assert route(get(path), site(), tls=True).status == HTTPStatus.NOT_FOUND


def test_methods_and_bodies():
    resp = route(get("/", method="POST"), site(), tls=False)
    assert resp.status == HTTPStatus.METHOD_NOT_ALLOWED
    assert dict(resp.headers)["Allow"] == "GET, HEAD"
    assert route(req("OPTIONS * HTTP/1.1\nHost: a\n\n"), site(), tls=True).status == 405
    resp = route(get("/", extra="Content-Length: 3\n"), site(), tls=True)
    assert resp.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert route(get("/", extra="Content-Length: 0\n"), site(), tls=True).status == 404
    assert route(get("/", method="HEAD"), site(), tls=False).status == 301


# --- the policy text and the context ---


def test_policy_text():
    assert policy_text("mx.example.test", "enforce", 31557600) == (
        "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 31557600\r\n")
    for mode, max_age in (("strict", 1), ("testing", -1), ("testing", 31557601),
                          ("testing", "1"), ("testing", True)):
        with pytest.raises(ValueError):
            policy_text("mx.example.test", mode, max_age)


def _config(hostname=HOSTNAME, admin=None):
    return SimpleNamespace(server=SimpleNamespace(hostname=hostname),
                           listen=SimpleNamespace(admin=admin))


def test_context_update():
    accounts = SimpleNamespace(list_domains=lambda: ["example.test"])
    ctx = WebContext(_config(), accounts, None)
    assert (ctx.hostname, ctx.https_port, ctx.mta_sts_mode, ctx.mta_sts_max_age) == \
        (HOSTNAME, 443, "testing", 604800)
    assert ctx.domains() == ["example.test"]
    ctx.update_config(_config("mx.example.test", Listen(None, 8443)), mta_sts_mode="enforce")
    assert (ctx.hostname, ctx.https_port, ctx.mta_sts_mode) == ("mx.example.test", 8443,
                                                                 "enforce")
    with pytest.raises(ValueError):
        ctx.update_config(_config("changed.test"), mta_sts_max_age=-5)
    assert ctx.hostname == "mx.example.test"  # a refused update changes nothing
    with pytest.raises(ValueError):
        WebContext(_config(), accounts, None, mta_sts_mode="enforcing")


def test_real_config(tmp_path):
    from server.config import parse_config, render_config
    config = parse_config(render_config(HOSTNAME, tmp_path, {"admin": "127.0.0.1:8443"}),
                          tmp_path / "mailstead.toml")
    ctx = WebContext(config, SimpleNamespace(list_domains=list), None)
    assert (ctx.hostname, ctx.https_port) == (HOSTNAME, 8443)
