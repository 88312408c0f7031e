"""The ACME client and the challenge responder against a real Pebble (RFC 8555 test CA).

Pebble's validation authority resolves the test names with our loopback DNS server (all
127.0.0.1) and dials two tiny servers here: an HTTP server answering http-01 from the
responder, and a TLS server whose context (mailstead's own, from ``server.tlscert``) has the
responder installed for tls-alpn-01. No mailstead instance is needed.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import socket
import socketserver
import ssl
import stat
import threading
import time
import types

import josepy as jose
import pytest
from acme import client as acme_client
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store

from server.acme.client import ACMEClient, ACMEError, _problem, _seconds
from server.acme.responder import ACME_TLS_1, ID_PE_ACME_IDENTIFIER, ChallengeResponder
from server.tlscert import make_self_signed, server_context
from tests.conftest import require_tool
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.pebble import Pebble

NAMES = ["mail.example.test", "imap.example.test"]
ACME_PATH = "/.well-known/acme-challenge/"


class _HTTPHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.paths.append(self.path)
        body = None
        if self.path.startswith(ACME_PATH):
            body = self.server.responder.http01(self.path[len(ACME_PATH):])
        if body is None:
            self.send_error(404)
            return
        data = body.encode("ascii")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _TLSHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(5)
        try:
            with self.server.ctx.wrap_socket(self.request, server_side=True):
                pass  # the handshake is all a tls-alpn-01 validation needs
        except (ssl.SSLError, OSError):
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve(server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """DNS + HTTP + TLS responders + Pebble, shared by the module (Pebble starts in ~1 s)."""
    require_tool("pebble")
    root = tmp_path_factory.mktemp("acme")
    responder = ChallengeResponder()
    make_self_signed("mail.example.test", root / "cert.pem", root / "key.pem")
    ctx = server_context(root / "cert.pem", root / "key.pem")
    responder.install(ctx)
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HTTPHandler)
    web.daemon_threads = True
    web.responder, web.paths = responder, []
    tls = _Server(("127.0.0.1", 0), _TLSHandler)
    tls.ctx = ctx
    threads = [_serve(web), _serve(tls)]
    with DNSTestServer(DEFAULT_ZONE) as dns:
        dns.set("imap.example.test", "A", "127.0.0.1")
        with Pebble(root, dns.nameserver, web.server_address[1],
                    tls.server_address[1], blocklist=("blocked.example.test",)) as pebble:
            yield types.SimpleNamespace(pebble=pebble, responder=responder, web=web, tls=tls,
                                        ctx=ctx, dns=dns, root=root)
    for server in (web, tls):
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join(5)


def _client(lab, state, **kw) -> ACMEClient:
    return ACMEClient(lab.pebble.directory, state, email="postmaster@example.test",
                      ca_bundle=str(lab.pebble.api_ca), **kw)


def _verify(lab, issued, names):
    certs = x509.load_pem_x509_certificates(issued.chain_pem)
    roots = x509.load_pem_x509_certificates(lab.pebble.roots())
    assert len(certs) >= 2  # leaf + Pebble's intermediate
    for name in names:
        verifier = PolicyBuilder().store(Store(roots)).build_server_verifier(x509.DNSName(name))
        chain = verifier.verify(certs[0], certs[1:])
        assert chain[-1] in roots
    key = serialization.load_pem_private_key(issued.key_pem, None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*spki) == certs[0].public_key().public_bytes(*spki)
    assert issued.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert sorted(issued.names) == sorted(names)
    assert issued.not_before < issued.not_after
    assert issued.issuer == certs[0].issuer.rfc4514_string()


# ---------------------------------------------------------------------- account
def test_account_created_once(lab, tmp_path, monkeypatch):
    state = tmp_path / "acme"
    url = _client(lab, state).account()
    assert url.startswith(f"https://127.0.0.1:{lab.pebble.port}/")
    for name in ("account-key.pem", "account.json"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    key_before = (state / "account-key.pem").read_bytes()
    reg_before = (state / "account.json").read_bytes()

    def no_second_registration(*args, **kwargs):
        raise AssertionError("registered twice")

    monkeypatch.setattr(acme_client.ClientV2, "new_account", no_second_registration)
    again = _client(lab, state)  # a later run: a new process, same data dir
    assert again.account() == url
    assert again.account() == url
    assert (state / "account-key.pem").read_bytes() == key_before
    assert (state / "account.json").read_bytes() == reg_before


def test_lost_registration_finds_the_account_by_key(lab, tmp_path):
    state = tmp_path / "acme"
    url = _client(lab, state).account()
    (state / "account.json").unlink()
    # RFC 8555 §7.3.1: the CA answers 200 + Location for a key it knows; no new account.
    assert _client(lab, state).account() == url
    assert (state / "account.json").exists()


def test_changed_email_updates_the_account(lab, tmp_path, monkeypatch):
    state = tmp_path / "acme"
    url = _client(lab, state).account()
    monkeypatch.setattr(acme_client.ClientV2, "new_account", None)  # must not be called
    moved = ACMEClient(lab.pebble.directory, state, email="admin@example.test",
                       ca_bundle=str(lab.pebble.api_ca))
    assert moved.account() == url
    stored = json.loads((state / "account.json").read_text())["accounts"]
    assert stored[lab.pebble.directory]["contact"] == ["mailto:admin@example.test"]


def test_forgotten_account_is_registered_again(lab, tmp_path):
    """A CA that lost the account (Pebble keeps state in memory) answers accountDoesNotExist:
    the client registers once more instead of failing until someone deletes account.json."""
    with Pebble(tmp_path, lab.dns.nameserver, lab.web.server_address[1],
                lab.tls.server_address[1]) as pebble:
        acme = ACMEClient(pebble.directory, tmp_path / "acme", ca_bundle=str(pebble.api_ca))
        first = acme.account()
        pebble.stop()
        pebble.start()  # same ports, empty memory
        lab.pebble, saved = pebble, lab.pebble  # _verify fetches this Pebble's roots
        try:
            again = ACMEClient(pebble.directory, tmp_path / "acme",
                               ca_bundle=str(pebble.api_ca))
            _verify(lab, again.issue(["mail.example.test"], "http-01", lab.responder),
                    ["mail.example.test"])
        finally:
            lab.pebble = saved
    stored = json.loads((tmp_path / "acme" / "account.json").read_text())["accounts"]
    assert stored[pebble.directory]["uri"] != first


def test_external_account_binding(lab, tmp_path):
    kid, hmac_key = "kid-1", jose.b64encode(b"k" * 32).decode()
    with Pebble(tmp_path, lab.dns.nameserver, 1, 1, eab_keys={kid: hmac_key}) as pebble:
        plain = ACMEClient(pebble.directory, tmp_path / "a", ca_bundle=str(pebble.api_ca))
        with pytest.raises(ACMEError) as err:
            plain.account()
        assert "externalAccountRequired" in err.value.detail
        assert not err.value.challenge_failed
        bound = ACMEClient(pebble.directory, tmp_path / "b", ca_bundle=str(pebble.api_ca),
                           eab_kid=kid, eab_hmac_key=hmac_key)
        assert bound.account().startswith(pebble.directory.removesuffix("/dir"))


# ---------------------------------------------------------------------- issuance
def test_issue_http01_two_names(lab, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    acme = _client(lab, tmp_path / "acme")
    started = time.monotonic()
    issued = acme.issue(NAMES, "http-01", lab.responder)
    assert time.monotonic() - started < 5  # our polling, not the library's 1 s sleeps
    _verify(lab, issued, NAMES)
    assert sum(p.startswith(ACME_PATH) for p in lab.web.paths) >= 2
    assert lab.responder.pending() == 0
    account_key = serialization.load_pem_private_key(
        (tmp_path / "acme" / "account-key.pem").read_bytes(), None)
    secret = jose.JWKEC(key=account_key).fields_to_partial_json()["d"]
    assert secret not in caplog.text  # the account key is never logged


def test_issue_tls_alpn01_rsa(lab, tmp_path):
    issued = _client(lab, tmp_path / "acme").issue(NAMES, "tls-alpn-01", lab.responder,
                                                   key_type="rsa2048")
    _verify(lab, issued, NAMES)
    leaf = x509.load_pem_x509_certificates(issued.chain_pem)[0]
    assert leaf.public_key().key_size == 2048
    assert lab.responder.pending() == 0


def test_failing_challenge_names_the_reason(lab, tmp_path):
    unserved = ChallengeResponder()  # not wired to the HTTP server: it answers 404
    with pytest.raises(ACMEError) as err:
        _client(lab, tmp_path / "acme").issue(["mail.example.test"], "http-01", unserved)
    assert err.value.challenge_failed
    assert "mail.example.test: http-01 failed: unauthorized:" in err.value.detail
    assert "404" in err.value.detail
    assert unserved.pending() == 0


def test_failing_tls_alpn01_names_the_reason(lab, tmp_path):
    unserved = ChallengeResponder()  # the TLS server presents its own certificate
    with pytest.raises(ACMEError) as err:
        _client(lab, tmp_path / "acme").issue(["mail.example.test"], "tls-alpn-01", unserved)
    assert err.value.challenge_failed
    assert "mail.example.test: tls-alpn-01 failed:" in err.value.detail
    assert unserved.pending() == 0


def test_refused_order_is_not_a_challenge_failure(lab, tmp_path):
    with pytest.raises(ACMEError) as err:
        _client(lab, tmp_path / "acme").issue(["mail.blocked.example.test"], "http-01",
                                              lab.responder)
    assert not err.value.challenge_failed
    assert err.value.detail.startswith(
        "ordering a certificate for mail.blocked.example.test: rejectedIdentifier: ")
    assert lab.responder.pending() == 0


# ---------------------------------------------------------------------- network errors
def test_unreachable_directory(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    acme = ACMEClient(f"https://127.0.0.1:{port}/dir", tmp_path / "acme", timeout=2)
    with pytest.raises(ACMEError) as err:
        acme.issue(["mail.example.test"], "http-01", ChallengeResponder())
    assert not err.value.challenge_failed
    assert err.value.detail == (f"reading the ACME directory https://127.0.0.1:{port}/dir: "
                                "cannot reach the ACME server: Connection refused")


def test_untrusted_directory_certificate(lab, tmp_path):
    # Without ca_bundle the system store is used, which does not know Pebble's API CA.
    acme = ACMEClient(lab.pebble.directory, tmp_path / "acme")
    with pytest.raises(ACMEError) as err:
        acme.account()
    assert "cannot reach the ACME server: certificate not trusted" in err.value.detail


def test_http_directory_refused(tmp_path):
    with pytest.raises(ValueError):
        ACMEClient("http://127.0.0.1:1/dir", tmp_path)


# ---------------------------------------------------------------------- responder
def _handshake(lab, server_name: str, alpn: list[str] | None) -> tuple[x509.Certificate, str]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # we inspect, not trust
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(lab.tls.server_address, timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        return (x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)),
                tls.selected_alpn_protocol())


def test_install_switches_only_the_challenge_name(lab):
    own = x509.load_pem_x509_certificate((lab.root / "cert.pem").read_bytes())
    lab.responder.add_tls_alpn01("Mail.Example.Test", "token.thumbprint")
    try:
        cert, alpn = _handshake(lab, "mail.example.test", [ACME_TLS_1])
        assert alpn == ACME_TLS_1
        ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
        assert ext.critical and len(ext.value.value) == 34  # OCTET STRING of a SHA-256
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["mail.example.test"]
        for other in ("imap.example.test", None):  # another name, or no SNI at all
            cert, alpn = _handshake(lab, other, None)
            assert cert == own and alpn is None
    finally:
        lab.responder.remove_tls_alpn01("mail.example.test")
    assert lab.responder.pending() == 0
    assert _handshake(lab, "mail.example.test", None)[0] == own


def test_install_works_for_asyncio_listeners(lab):
    """mailstead's listeners are asyncio: the callback gets an SSLObject there, not a socket."""
    async def handshake(name: str) -> x509.Certificate:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols([ACME_TLS_1])
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=lab.ctx)
        async with server:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", server.sockets[0].getsockname()[1], ssl=ctx, server_hostname=name)
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
        return x509.load_der_x509_certificate(der)

    lab.responder.add_tls_alpn01("mail.example.test", "token.thumbprint")
    try:
        cert = asyncio.run(handshake("mail.example.test"))
        assert cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER).critical
    finally:
        lab.responder.remove_tls_alpn01("mail.example.test")
    own = x509.load_pem_x509_certificate((lab.root / "cert.pem").read_bytes())
    assert asyncio.run(handshake("mail.example.test")) == own


def test_http01_lookup():
    responder = ChallengeResponder()
    responder.add_http01("tok", "tok.thumb")
    assert responder.http01("tok") == "tok.thumb"
    assert responder.http01("other") is None
    responder.remove_http01("tok")
    responder.remove_http01("tok")  # removing twice is harmless (cleanup paths)
    assert responder.http01("tok") is None and responder.pending() == 0


def test_retry_after_and_problem_texts():
    assert _seconds("120") == 120 and _seconds(None) is None and _seconds("soon") is None
    assert _seconds("Wed, 21 Oct 2099 07:28:00 GMT") > 0
    assert _seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    err = messages.Error.from_json({
        "type": "urn:ietf:params:acme:error:rejectedIdentifier", "detail": "2 names refused",
        "subproblems": [{"type": "urn:ietf:params:acme:error:caa", "detail": "CAA forbids",
                         "identifier": {"type": "dns", "value": "mail.example.test"}}]})
    assert _problem(err) == ("rejectedIdentifier: 2 names refused; "
                             "mail.example.test: caa: CAA forbids")
