"""MTA-STS (RFC 8461): policy and TXT parsing, the HTTP response parser, and discovery, fetch and
cache against the loopback DNS server and a loopback HTTPS server with a private CA."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from server.mtasts import (
    MAX_AGE_CAP,
    MAX_BODY,
    MTASTS,
    Policy,
    PolicyError,
    parse_body,
    parse_head,
    parse_policy,
    parse_txt,
)
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.httpsserver import HTTPSTestServer, TestCA, http_response
from tests.support.instance import free_port

DOMAIN = "remote.test"
POLICY = (b"version: STSv1\nmode: enforce\nmx: mx.remote.test\nmx: *.backup.remote.test\n"
          b"max_age: 86400\n")


# ------------------------------------------------------------------ parse_policy

def test_parse_policy_lf():
    p = parse_policy(POLICY.decode(), "2026", 1000.0)
    assert p == Policy("2026", "enforce", ("mx.remote.test", "*.backup.remote.test"), 86400, 1000.0)


def test_parse_policy_crlf_same_as_lf():
    crlf = POLICY.decode().replace("\n", "\r\n")
    assert parse_policy(crlf, "1", 0) == parse_policy(POLICY.decode(), "1", 0)


def test_parse_policy_unknown_keys_blank_lines_and_spacing_ignored():
    p = parse_policy("version:STSv1\r\nx-vendor_ext.1: what ever\n\nmode:\t testing \n"
                     "max_age: 60\nmx: MX.Remote.Test.\nfuture: key: with colon", "a", 0)
    assert (p.mode, p.max_age, p.mx) == ("testing", 60, ("mx.remote.test",))


def test_parse_policy_first_of_repeated_field_counts():
    p = parse_policy("version: STSv1\nmode: testing\nmode: enforce\nmax_age: 5\nmax_age: 9\n"
                     "mx: a.test\nmx: b.test\n", "a", 0)
    assert (p.mode, p.max_age, p.mx) == ("testing", 5, ("a.test", "b.test"))


def test_parse_policy_max_age_capped():
    p = parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999\n", "a", 0)
    assert p.max_age == MAX_AGE_CAP == 31557600


def test_parse_policy_mode_none_needs_no_mx():
    p = parse_policy("version: STSv1\nmode: none\nmax_age: 0\n", "a", 0)
    assert (p.mode, p.mx, p.max_age) == ("none", (), 0)


@pytest.mark.parametrize("text, reason", [
    ("mode: enforce\nmax_age: 1\nmx: a.test", "missing version"),
    ("Version: STSv1\nmode: enforce\nmax_age: 1\nmx: a.test", "missing version"),
    ("version: STSv2\nmode: enforce\nmax_age: 1\nmx: a.test", "unsupported version"),
    ("version: STSv1\nmax_age: 1\nmx: a.test", "missing mode"),
    ("version: STSv1\nmode: Enforce\nmax_age: 1\nmx: a.test", "invalid mode"),
    ("version: STSv1\nmode: strict\nmax_age: 1\nmx: a.test", "invalid mode"),
    ("version: STSv1\nmode: enforce\nmx: a.test", "missing max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: -1\nmx: a.test", "invalid max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: 1d\nmx: a.test", "invalid max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: 12345678901\nmx: a.test", "invalid max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx in a enforce policy"),
    ("version: STSv1\nmode: testing\nmax_age: 1\n", "no mx in a testing policy"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\nmx: a.test\nnonsense", "line 5"),
    ("version: STSv1\nmode : enforce\nmax_age: 1\nmx: a.test", "line 2"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\nmx: a..test", "invalid mx"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\nmx: *.*.a.test", "invalid mx"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\nmx: a*.test", "invalid mx"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\nmx: localhost", "invalid mx"),
    ("<html><body>Not found</body></html>", "line 1"),
    ("", "missing version"),
])
def test_parse_policy_errors(text, reason):
    with pytest.raises(PolicyError, match=reason):
        parse_policy(text, "a", 0)


# ------------------------------------------------------------------ parse_txt

@pytest.mark.parametrize("record, expected", [
    ("v=STSv1; id=2026", "2026"),
    ("v=STSv1;id=20160831085700Z;", "20160831085700Z"),
    ("v=STSv1;\tid=abc ; ext_1=x!y ;", "abc"),
    ("v=STSv1; id=first; id=second", "first"),
    ("v=STSv1; id=" + "a" * 32, "a" * 32),
])
def test_parse_txt(record, expected):
    assert parse_txt(record) == expected


@pytest.mark.parametrize("record", [
    "v=STSv1;", "v=STSv1; ext=1", "v=STSv1; id=", "v=STSv1; id=a-b", "v=STSv1; id=" + "a" * 33,
    "v=STSv1; id=1; bad", "v=STSv1; id=1; x=a b", "v=STSv2; id=1", "id=1; v=STSv1",
])
def test_parse_txt_errors(record):
    with pytest.raises(PolicyError):
        parse_txt(record)


# ------------------------------------------------------------------ matches / expired

@pytest.mark.parametrize("host, ok", [
    ("mx.remote.test", True), ("MX.Remote.TEST.", True), ("mx2.remote.test", False),
    ("remote.test", False), ("a.backup.remote.test", True), ("A.BACKUP.remote.test.", True),
    ("backup.remote.test", False), ("a.b.backup.remote.test", False),
    ("xbackup.remote.test", False), (".backup.remote.test", False), ("", False),
])
def test_matches(host, ok):
    assert parse_policy(POLICY.decode(), "1", 0).matches(host) is ok


def test_matches_pattern_written_with_trailing_dot_and_capitals():
    p = parse_policy("version: STSv1\nmode: enforce\nmax_age: 1\nmx: *.Mail.Test.\n", "1", 0)
    assert p.mx == ("*.mail.test",)
    assert p.matches("eu.mail.test") and not p.matches("mail.test")


def test_expired():
    p = Policy("1", "enforce", ("a.test",), 100, 1000.0)
    assert not p.expired(1099.9) and p.expired(1100.0)


# ------------------------------------------------------------------ HTTP response parser

def test_parse_head_incremental_and_framing():
    raw = http_response(b"abc", framing="chunked")
    assert parse_head(raw[:10], eof=False) is None
    status, headers, rest = parse_head(raw, eof=False)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert parse_body(headers, rest[:-3], eof=False) is None
    assert parse_body(headers, rest, eof=False) == b"abc"
    with pytest.raises(PolicyError, match="inside the chunked body"):
        parse_body(headers, rest[:-3], eof=True)


@pytest.mark.parametrize("head, reason", [
    (b"HTTP/1.1 200 OK\r\nContent-Type : text/plain\r\n\r\n", "header line"),
    (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "header line"),
    (b"HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n", "header line"),
    (b"HTTP/2 200\r\n\r\n", "status line"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", "repeated"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * (MAX_BODY // 4) + b"\r\n\r\n", "too large"),
])
def test_parse_head_errors(head, reason):
    with pytest.raises(PolicyError, match=reason):
        parse_head(head, eof=False)


@pytest.mark.parametrize("headers, body, reason", [
    ({"transfer-encoding": "chunked", "content-length": "3"}, b"", "both"),
    ({"transfer-encoding": "gzip, chunked"}, b"", "Transfer-Encoding"),
    ({"content-encoding": "gzip"}, b"", "Content-Encoding"),
    ({"content-length": "+3"}, b"abc", "Content-Length"),
    ({"content-length": str(MAX_BODY + 1)}, b"", "larger"),
    ({"transfer-encoding": "chunked"}, b"zz\r\n", "chunk size"),
    ({"transfer-encoding": "chunked"}, b"3\r\nabcd\r\n", "CRLF"),
    ({"transfer-encoding": "chunked"}, b"10000\r\n" + b"a" * 65536 + b"\r\n1\r\n", "larger"),
])
def test_parse_body_errors(headers, body, reason):
    with pytest.raises(PolicyError, match=reason):
        parse_body(headers, body, eof=False)


def test_parse_body_chunk_framing_limit():
    trickle = b"1\r\na\r\n" * (MAX_BODY // 2)  # 32 KiB of data in 192 KiB of framing
    with pytest.raises(PolicyError, match="chunked body too large"):
        parse_body({"transfer-encoding": "chunked"}, trickle, eof=False)


def test_parse_body_content_length_and_close():
    assert parse_body({"content-length": "3"}, b"ab", eof=False) is None
    assert parse_body({"content-length": "3"}, b"abcdef", eof=False) == b"abc"
    with pytest.raises(PolicyError, match="before the end"):
        parse_body({"content-length": "3"}, b"ab", eof=True)
    assert parse_body({}, b"ab", eof=False) is None
    assert parse_body({}, b"ab", eof=True) == b"ab"


# ------------------------------------------------------------------ discovery, fetch, cache

class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, stranger = TestCA(), TestCA("someone else's CA")
    return {
        "cafile": ca.write(d / "ca.pem"),
        "good": ca.issue(d, "mta-sts.remote.test"),
        "wrong_name": ca.issue(d, "mta-sts.other.test"),
        "untrusted": stranger.issue(d, "mta-sts.remote.test"),
    }


@pytest.fixture(scope="module")
def dns_module():
    with DNSTestServer(DEFAULT_ZONE) as s:
        yield s
    assert not s.errors


@pytest.fixture
def dns(dns_module):
    """The module's DNS server with the records every test starts from."""
    dns_module.delete("_mta-sts.remote.test")
    dns_module.delete("mta-sts.remote.test")
    dns_module.set("_mta-sts.remote.test", "TXT", "v=STSv1; id=2026")
    dns_module.set("mta-sts.remote.test", "A", "127.0.0.1")
    return dns_module


@pytest.fixture(scope="module")
def web_module(pki):
    with HTTPSTestServer(*pki["good"]) as s:
        yield s


@pytest.fixture
def web(web_module, pki):
    """The module's HTTPS server, reset: good certificate, good policy, no requests seen."""
    web_module.set_certificate(*pki["good"])
    web_module.response, web_module.delay = http_response(POLICY), 0.0
    web_module.requests.clear()
    return web_module


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def make(tmp_path, dns, web, pki, clock):
    def make(**kw) -> MTASTS:
        kw = {"https_port": web.port, "cafile": pki["cafile"], "timeout": 3.0,
              "clock": clock} | kw
        return MTASTS(dns.async_resolver(), tmp_path / "mta-sts", **kw)
    return make


def get(sts: MTASTS, domain: str = DOMAIN) -> Policy | None:
    return asyncio.run(sts.policy(domain))


def test_fetch_then_cached(make, web, tmp_path, caplog):
    sts = make()
    with caplog.at_level(logging.INFO, "mailstead.mtasts"):
        p = get(sts)
    assert p.id == "2026" and p.mode == "enforce" and p.matches("mx.remote.test")
    [req] = web.requests
    assert (req.method, req.path, req.version) == ("GET", "/.well-known/mta-sts.txt", "HTTP/1.1")
    assert req.headers["host"] == "mta-sts.remote.test" and req.sni == "mta-sts.remote.test"
    assert "mta-sts fetch remote.test id=2026 mode=enforce" in caplog.text
    assert get(sts) == p
    assert get(sts, "Remote.Test.") == p
    assert len(web.requests) == 1
    saved = json.loads((tmp_path / "mta-sts" / "remote.test.json").read_text())
    assert saved["id"] == "2026" and saved["fetched"] == p.fetched


def test_id_change_refetches(make, web, dns):
    sts = make()
    assert get(sts).id == "2026"
    dns.set("_mta-sts.remote.test", "TXT", "v=STSv1; id=2027")
    web.response = http_response(POLICY.replace(b"enforce", b"testing"))
    p = get(sts)
    assert (p.id, p.mode) == ("2027", "testing") and len(web.requests) == 2


def test_no_txt_record(make, web, dns):
    dns.delete("_mta-sts.remote.test", "TXT")
    assert get(make()) is None
    assert web.requests == []


@pytest.mark.parametrize("records", [
    ["v=STSv1; id=1", "v=STSv1; id=2"],  # RFC 8461 §3.1: not exactly one
    ["v=STSv1 ; id=1"],                  # does not begin with "v=STSv1;"
    ["v=STSv1; id=bad-id"],
    ["v=spf1 -all"],
])
def test_unusable_txt_records(make, web, dns, records):
    dns.set("_mta-sts.remote.test", "TXT", records)
    assert get(make()) is None
    assert web.requests == []


def test_other_txt_records_ignored(make, dns):
    dns.set("_mta-sts.remote.test", "TXT", ["v=spf1 -all", "v=STSv1; id=9"])
    assert get(make()).id == "9"


def test_txt_gone_keeps_cached_policy(make, web, dns):
    """RFC 8461 §3.1/§5.1: removing the record does not cancel a cached policy."""
    sts = make()
    p = get(sts)
    dns.delete("_mta-sts.remote.test", "TXT")
    assert get(sts) == p
    assert get(make()) == p  # from disk too
    assert len(web.requests) == 1


def test_txt_lookup_failure_keeps_cached_policy(make, dns):
    sts = make()
    p = get(sts)
    silent = dns.async_resolver(timeout=0.3)
    silent.port = free_port()  # nobody answers there: the lookup times out
    sts.resolver = silent
    assert get(sts) == p
    assert get(MTASTS(silent, sts.cache_dir)) == p


FAILURES = {
    "500": http_response(b"oops", status="500 Internal Server Error"),
    "404": http_response(b"", status="404 Not Found"),
    "redirect": http_response(b"", status="301 Moved Permanently",
                              headers=("Location: https://mta-sts.remote.test/x.txt",)),
    "content type": http_response(POLICY, content_type="text/html"),
    "no content type": http_response(POLICY, content_type=""),
    "oversize": http_response(POLICY + b"x-pad: " + b"a" * MAX_BODY + b"\n"),
    "oversize close": http_response(POLICY + b"x-pad: " + b"a" * MAX_BODY + b"\n",
                                    framing="close"),
    "oversize chunked": http_response(POLICY + b"x-pad: " + b"a" * MAX_BODY + b"\n",
                                      framing="chunked"),
    "bad policy": http_response(b"version: STSv1\nmode: enforce\nmax_age: 60\n"),
    "truncated": http_response(POLICY)[:-5],
    "not http": b"SSH-2.0-OpenSSH_9.6\r\n",
}
REASONS = {"500": "HTTP status 500", "404": "HTTP status 404", "redirect": "HTTP status 301",
           "content type": "Content-Type text/html", "no content type": "Content-Type missing",
           "oversize": "larger", "oversize close": "larger", "oversize chunked": "larger",
           "bad policy": "no mx", "truncated": "closed", "not http": "closed"}


@pytest.mark.parametrize("case", FAILURES)
def test_fetch_failure_without_cache(make, web, case, caplog):
    web.response = FAILURES[case]
    with caplog.at_level(logging.WARNING, "mailstead.mtasts"):
        assert get(make()) is None
    assert len(web.requests) == 1
    assert "mta-sts fetch remote.test id=2026 failed" in caplog.text
    assert REASONS[case] in caplog.text


@pytest.mark.parametrize("case", FAILURES)
def test_fetch_failure_keeps_cached_policy(make, web, dns, case):
    sts = make()
    p = get(sts)
    dns.set("_mta-sts.remote.test", "TXT", "v=STSv1; id=2027")
    web.response = FAILURES[case]
    assert get(sts) == p
    assert get(make()) == p  # a new instance with the cache on disk too


@pytest.mark.parametrize("cert, reason", [
    ("wrong_name", "Hostname mismatch"), ("untrusted", "unable to get local issuer"),
])
def test_tls_failure(make, web, dns, pki, tmp_path, cert, reason, caplog):
    sts = make()
    p = get(sts)
    web.set_certificate(*pki[cert])
    dns.set("_mta-sts.remote.test", "TXT", "v=STSv1; id=2027")
    with caplog.at_level(logging.WARNING, "mailstead.mtasts"):
        assert get(sts) == p
        fresh = MTASTS(dns.async_resolver(), tmp_path / "empty", https_port=web.port,
                       cafile=pki["cafile"])
        assert get(fresh) is None
    assert caplog.text.count(reason) == 2
    assert len(web.requests) == 1  # the failing handshakes sent no request


def test_private_ca_needs_cafile(tmp_path, dns, web):
    sts = MTASTS(dns.async_resolver(), tmp_path, https_port=web.port, timeout=3.0)
    assert get(sts) is None  # the system CAs alone do not trust the test CA
    assert web.requests == []


@pytest.mark.parametrize("response", [
    pytest.param(http_response(POLICY, framing="chunked"), id="chunked"),
    pytest.param(http_response(POLICY, framing="close"), id="read-to-close"),
    pytest.param(http_response(POLICY, content_type="Text/Plain; charset=utf-8"), id="charset"),
    pytest.param(http_response(POLICY.replace(b"\n", b"\r\n"), status="200 ",
                               headers=("Cache-Control: no-store", "Connection: close")),
                 id="crlf-empty-reason"),
    pytest.param(http_response(POLICY, framing="chunked").replace(
        b"\r\n0\r\n\r\n", b"\r\n0\r\nX-Trailer: 1\r\n\r\n"), id="chunked-trailer"),
])
def test_response_framings(make, web, response):
    web.response = response
    p = get(make())
    assert p is not None and p.mx == ("mx.remote.test", "*.backup.remote.test")


def test_connect_host_overrides_address_not_name(make, web, dns):
    dns.delete("mta-sts.remote.test")
    assert get(make()) is None  # no address for mta-sts.remote.test
    p = get(make(connect_host="127.0.0.1"))
    assert p.id == "2026" and web.requests[-1].sni == "mta-sts.remote.test"


def test_timeout(make, web):
    web.delay = 10
    start = time.monotonic()
    assert get(make(timeout=0.5)) is None
    assert time.monotonic() - start < 3


def test_persisted_cache_survives_restart(make, web, tmp_path):
    p = get(make())
    again = get(make())
    assert again == p and len(web.requests) == 1


def test_expired_cache_not_used(make, web, clock):
    web.response = http_response(POLICY.replace(b"86400", b"100"))
    sts = make()
    get(sts)
    web.response = FAILURES["500"]
    clock.now += 99
    assert get(sts).max_age == 100   # still valid, same id: no fetch
    assert len(web.requests) == 1
    clock.now += 1
    assert get(sts) is None          # expired and the refetch failed
    assert get(make()) is None       # same from disk
    clock.now += 1000                # after the retry backoff, a good policy again
    web.response = http_response(POLICY)
    assert get(sts).fetched == clock.now


def test_failed_fetch_backoff(make, web, clock):
    web.response = FAILURES["500"]
    sts = make()
    assert get(sts) is None and get(sts) is None
    assert len(web.requests) == 1    # RFC 8461 §3.3: not again within five minutes
    clock.now += 301
    web.response = http_response(POLICY)
    assert get(sts).id == "2026" and len(web.requests) == 2


def test_daily_refresh(make, web, clock):
    web.response = http_response(POLICY.replace(b"86400", b"604800"))
    sts = make()
    p = get(sts)
    clock.now += 86401
    web.response = FAILURES["500"]
    assert get(sts) == p             # refresh failed: the cached policy still applies
    web.response = http_response(POLICY.replace(b"enforce", b"testing"))
    clock.now += 301
    assert get(sts).mode == "testing" and len(web.requests) == 3


def test_mode_none_returned(make, web):
    web.response = http_response(b"version: STSv1\nmode: none\nmax_age: 86400\n")
    p = get(make())
    assert (p.mode, p.mx) == ("none", ())


GOOD_CACHE = {"id": "2026", "policy": "version: STSv1\nmode: enforce\nmax_age: 86400\nmx: a.test\n"}


@pytest.mark.parametrize("content", [
    "{not json",
    "[]",
    json.dumps(GOOD_CACHE),                                   # no fetch time
    json.dumps(GOOD_CACHE | {"fetched": "NaN"}),              # would never expire
    json.dumps(GOOD_CACHE | {"fetched": time.time() + 1e6}),  # from the future: same
    json.dumps(GOOD_CACHE | {"fetched": time.time(), "id": "../x"}),
    json.dumps(GOOD_CACHE | {"fetched": time.time(), "id": 2026}),
    json.dumps(GOOD_CACHE | {"fetched": time.time(), "policy": "mode: enforce"}),
], ids=["not-json", "list", "no-fetch-time", "nan", "future", "bad-id", "int-id", "bad-policy"])
def test_corrupt_cache_file_ignored(make, web, dns, tmp_path, caplog, content):
    dns.set("_mta-sts.remote.test", "TXT", "v=STSv1; id=2027")  # a valid cache would be used
    web.response = FAILURES["500"]
    (tmp_path / "mta-sts").mkdir()
    (tmp_path / "mta-sts" / "remote.test.json").write_text(content)
    with caplog.at_level(logging.WARNING, "mailstead.mtasts"):
        assert get(make()) is None
    assert "unreadable" in caplog.text


def test_valid_cache_file_used(make, web, dns, tmp_path):
    """The control for the test above: the same setup with a sound file."""
    dns.set("_mta-sts.remote.test", "TXT", "v=STSv1; id=2027")
    web.response = FAILURES["500"]
    (tmp_path / "mta-sts").mkdir()
    (tmp_path / "mta-sts" / "remote.test.json").write_text(
        json.dumps(GOOD_CACHE | {"fetched": time.time()}))
    assert get(make()).mx == ("a.test",)


def test_cache_file_rewritten_after_corruption(make, web, tmp_path, caplog):
    (tmp_path / "mta-sts").mkdir()
    (tmp_path / "mta-sts" / "remote.test.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, "mailstead.mtasts"):
        assert get(make()).id == "2026"
    assert "unreadable" in caplog.text
    assert json.loads((tmp_path / "mta-sts" / "remote.test.json").read_text())["id"] == "2026"


def test_concurrent_calls_share_one_fetch(make, web):
    sts = make()

    async def both():
        return await asyncio.gather(sts.policy(DOMAIN), sts.policy(DOMAIN))

    a, b = asyncio.run(both())
    assert a == b and len(web.requests) == 1


def test_invalid_domain(make):
    with pytest.raises(ValueError):
        get(make(), "bad domain")
