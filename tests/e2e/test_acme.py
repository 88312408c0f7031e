"""Automatic TLS end to end: a running mailstead gets its certificate from Pebble.

Pebble (Let's Encrypt's test CA) resolves the names with our loopback DNS server and dials
the instance's own ``http`` listener for http-01 and its ``admin`` (HTTPS) listener for
tls-alpn-01, exactly as Let's Encrypt would dial ports 80 and 443. Every check connects a
verifying TLS client (Python ``ssl``, ``openssl s_client``) trusting only Pebble's root.
"""

from __future__ import annotations

import imaplib
import json
import signal
import socket
import ssl
import stat
import subprocess
import time

import pytest
from cryptography import x509

from tests.conftest import require_tool
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.instance import PASSWORD, Instance, cli, free_port
from tests.support.pebble import Pebble

HOST = "mail.example.test"
NAMES = {HOST, "mta-sts.example.test", "autoconfig.example.test"}
ISSUE_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def dns():
    require_tool("pebble")
    with DNSTestServer(DEFAULT_ZONE) as server:
        server.set("mta-sts.example.test", "A", "127.0.0.1")
        server.set("autoconfig.example.test", "A", "127.0.0.1")
        yield server


def closed_port() -> int:
    """A loopback port nothing listens on: a challenge sent there fails."""
    return free_port()


class Lab:
    """An instance and a Pebble whose validation ports are the instance's (or not)."""

    def __init__(self, root, dns, *, challenge="http-01", http_ok=True, alpn_ok=True,
                 domain_names=("mta-sts", "autoconfig"), blocklist=()):
        self.inst = Instance(root, dns.nameserver)
        http_port = self.inst.ports["http"] if http_ok else closed_port()
        tls_port = self.inst.ports["admin"] if alpn_ok else closed_port()
        self.pebble = Pebble(root, dns.nameserver, http_port, tls_port,
                             blocklist=blocklist).start()
        self.inst.set_acme({"enabled": True, "directory": self.pebble.directory,
                            "ca_bundle": str(self.pebble.api_ca), "challenge": challenge,
                            "email": "postmaster@example.test",
                            "domain_names": list(domain_names)})
        self.roots_file = root / "pebble-roots.pem"
        self.roots_file.write_bytes(self.pebble.roots())

    def status(self) -> dict:
        try:
            return json.loads((self.inst.data_dir / "tls" / "acme-status.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_status(self, done, timeout: float = ISSUE_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if done(status):
                return status
            time.sleep(0.05)
        raise AssertionError(f"status {self.status()}\nlog:\n{self.inst.log()[-3000:]}")

    def verifying(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.roots_file))
        ctx.check_hostname = True
        return ctx

    def stop(self):
        self.inst.stop()
        self.pebble.stop()


@pytest.fixture
def lab_factory(tmp_path, dns):
    labs = []

    def make(**kw) -> Lab:
        lab = Lab(tmp_path / f"lab{len(labs)}", dns, **kw)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.stop()
    for lab in labs:  # a bug in the renewal loop is logged and survived: still a bug
        assert "Traceback" not in lab.inst.log(), lab.inst.log()


# --- clients ---


def _line(f) -> bytes:
    line = f.readline()
    assert line, "connection closed"
    return line


def _starttls(sock: socket.socket, protocol: str) -> None:
    f = sock.makefile("rb")
    if protocol == "smtp":
        assert _line(f).startswith(b"220")
        sock.sendall(b"EHLO client.example.test\r\n")
        while not (line := _line(f)).startswith(b"250 "):
            assert line.startswith(b"250-"), line
        sock.sendall(b"STARTTLS\r\n")
        assert _line(f).startswith(b"220"), "STARTTLS refused"
    elif protocol == "imap":
        assert _line(f).startswith(b"* OK")
        sock.sendall(b"a STARTTLS\r\n")
        assert _line(f).startswith(b"a OK")
    elif protocol == "pop3":
        assert _line(f).startswith(b"+OK")
        sock.sendall(b"STLS\r\n")
        assert _line(f).startswith(b"+OK")
    f.close()  # the socket stays open: makefile() holds a reference only


def served_certificate(ctx: ssl.SSLContext, port: int, starttls: str | None = None,
                       name: str = HOST) -> x509.Certificate:
    """Handshake (after STARTTLS if asked) verifying against ``ctx``; the leaf served."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if starttls:
            _starttls(sock, starttls)
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def unverified_certificate(port: int) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return served_certificate(ctx, port)


class IMAP4Verified(imaplib.IMAP4_SSL):
    """IMAP over TLS to 127.0.0.1, verifying the certificate for HOST (no DNS lookup)."""

    def _create_socket(self, timeout):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=HOST)


def _names(cert: x509.Certificate) -> set[str]:
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(sans.get_values_for_type(x509.DNSName))


def _issued(status: dict) -> bool:
    return bool(status.get("last_success"))


# --- tests ---


def test_http01_certificate_served_by_every_listener(lab_factory):
    lab = lab_factory(challenge="http-01")
    # Until the CA issues one, the self-signed certificate from init serves.
    self_signed = x509.load_pem_x509_certificate(lab.inst.config.cert_file.read_bytes())
    started = time.monotonic()
    lab.inst.start()
    status = lab.wait_status(_issued)
    issued_in = time.monotonic() - started
    assert status["last_challenge"] == "http-01"
    assert set(status["names"]) == NAMES and status["dropped"] == []
    assert status["last_error"] is None and status["failures"] == 0
    acme_pem = lab.inst.data_dir / "tls" / "acme.pem"
    assert stat.S_IMODE(acme_pem.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in acme_pem.read_bytes()

    ctx = lab.verifying()
    ports = lab.inst.ports
    served = {
        "mx": served_certificate(ctx, ports["mx"], "smtp"),
        "submission": served_certificate(ctx, ports["submission"], "smtp"),
        "submissions": served_certificate(ctx, ports["submissions"]),
        "imap": served_certificate(ctx, ports["imap"], "imap"),
        "imaps": served_certificate(ctx, ports["imaps"]),
        "pop3": served_certificate(ctx, ports["pop3"], "pop3"),
        "pop3s": served_certificate(ctx, ports["pop3s"]),
        "admin": served_certificate(ctx, ports["admin"]),
        "admin mta-sts": served_certificate(ctx, ports["admin"], name="mta-sts.example.test"),
    }
    serials = {cert.serial_number for cert in served.values()}
    assert len(serials) == 1 and self_signed.serial_number not in serials
    assert _names(served["imaps"]) == NAMES
    assert "Pebble" in served["imaps"].issuer.rfc4514_string()

    out = cli("-c", str(lab.inst.config_path), "tls", "status").stdout
    assert "acme.pem" in out and "Pebble" in out and "last error:   -" in out
    for name in NAMES:
        assert name in out
    print(f"certificate issued {issued_in:.2f} s after start")  # figure for the notes


@pytest.mark.parametrize("starttls", ["smtp"])
def test_openssl_s_client_verifies_the_chain(lab_factory, starttls):
    openssl = require_tool("openssl")
    lab = lab_factory()
    lab.inst.start()
    lab.wait_status(_issued)
    for port, extra in ((lab.inst.ports["submission"], ["-starttls", starttls]),
                        (lab.inst.ports["imaps"], []), (lab.inst.ports["admin"], [])):
        proc = subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOST,
             "-verify_hostname", HOST, "-CAfile", str(lab.roots_file), "-verify_return_error",
             *extra], input=b"", capture_output=True, timeout=30)
        out = proc.stdout.decode(errors="replace")
        assert proc.returncode == 0, out + proc.stderr.decode(errors="replace")
        assert "Verify return code: 0 (ok)" in out


def test_tls_alpn01_when_chosen(lab_factory):
    # http-01 would fail: Pebble's port 80 is a closed port. Success proves tls-alpn-01.
    lab = lab_factory(challenge="tls-alpn-01", http_ok=False)
    lab.inst.start()
    status = lab.wait_status(_issued)
    assert status["last_challenge"] == "tls-alpn-01" and set(status["names"]) == NAMES
    assert _names(served_certificate(lab.verifying(), lab.inst.ports["imaps"])) == NAMES


def test_falls_back_to_the_other_challenge(lab_factory):
    lab = lab_factory(challenge="http-01", http_ok=False)
    lab.inst.start()
    status = lab.wait_status(_issued)
    assert status["last_challenge"] == "tls-alpn-01"
    assert served_certificate(lab.verifying(), lab.inst.ports["submissions"])
    assert "http-01" in lab.inst.log() and "failed" in lab.inst.log()


def test_name_without_dns_is_left_out_not_blocking(lab_factory, dns):
    lab = lab_factory(domain_names=("mta-sts", "autoconfig", "nodns"))
    lab.inst.start()
    status = lab.wait_status(_issued)
    assert status["dropped"] == ["nodns.example.test"]
    assert set(status["names"]) == NAMES
    assert status["dropped_error"]
    assert _names(served_certificate(lab.verifying(), lab.inst.ports["imaps"])) == NAMES


def test_renewal_swaps_the_certificate_and_keeps_open_sessions(lab_factory):
    lab = lab_factory()
    lab.inst.add_user("alice@example.test")
    lab.inst.start()
    first = lab.wait_status(_issued)
    ctx = lab.verifying()
    before = served_certificate(ctx, lab.inst.ports["imaps"])
    imap = IMAP4Verified("127.0.0.1", lab.inst.ports["imaps"], ssl_context=ctx)
    imap.login("alice@example.test", PASSWORD)
    assert imap.select("INBOX")[0] == "OK"

    out = cli("-c", str(lab.inst.config_path), "tls", "renew").stdout
    assert "renew" in out
    second = lab.wait_status(lambda s: s.get("last_success", 0) > first["last_success"])
    after = served_certificate(ctx, lab.inst.ports["imaps"])
    assert after.serial_number != before.serial_number
    # The key is kept ([acme] reuse_key) so a published TLSA record stays valid.
    assert after.public_key() == before.public_key()
    assert set(second["names"]) == NAMES
    # The session opened on the old certificate carries on.
    assert imap.noop()[0] == "OK"
    assert imap.select("INBOX")[0] == "OK"
    assert imap.logout()[0] == "BYE"
    # So do new connections on every listener.
    assert served_certificate(ctx, lab.inst.ports["submission"], "smtp").serial_number == \
        after.serial_number


def test_restart_reuses_a_valid_certificate(lab_factory):
    lab = lab_factory()
    lab.inst.start()
    first = lab.wait_status(_issued)
    served = served_certificate(lab.verifying(), lab.inst.ports["imaps"])
    lab.inst.stop()
    lab.inst.start()
    # Served at once from the stored file, no new order: rate limits are never spent on
    # restarts.
    again = served_certificate(lab.verifying(), lab.inst.ports["imaps"])
    assert again.serial_number == served.serial_number
    time.sleep(2)
    status = lab.status()
    assert status["last_attempt"] == first["last_attempt"]
    assert status["last_success"] == first["last_success"]


def test_failing_challenge_is_reported_not_looped(lab_factory):
    lab = lab_factory(http_ok=False, alpn_ok=False)
    lab.inst.start()
    status = lab.wait_status(lambda s: s.get("failures"))
    assert status["last_error"] and status["next_attempt"] > time.time() + 30
    # Both challenge types were tried in that one round, then it stopped.
    assert status["last_challenge"] == "tls-alpn-01"
    time.sleep(3)
    later = lab.status()
    assert later["failures"] == 1 and later["last_attempt"] == status["last_attempt"]
    # Meanwhile the self-signed certificate keeps every listener working.
    self_signed = x509.load_pem_x509_certificate(lab.inst.config.cert_file.read_bytes())
    assert unverified_certificate(lab.inst.ports["imaps"]).serial_number == \
        self_signed.serial_number
    out = cli("-c", str(lab.inst.config_path), "tls", "status").stdout
    assert "next attempt:" in out
    assert f"last error:   {later['last_error']}" in out
    # A restart does not retry before the pause is over either.
    lab.inst.stop()
    lab.inst.start()
    time.sleep(2)
    assert lab.status()["failures"] == 1


def test_renew_asks_again_at_once_after_failure(lab_factory):
    """The backoff is for automatic retries; an admin's `tls renew` goes at once."""
    lab = lab_factory(http_ok=False, alpn_ok=False)
    lab.inst.start()
    status = lab.wait_status(lambda s: s.get("failures"))
    lab.inst.signal(signal.SIGUSR2)
    lab.wait_status(lambda s: s.get("failures", 0) >= 2)
    assert lab.status()["last_attempt"] > status["last_attempt"]
