"""The outbound queue end to end over loopback: retries, flush, bounces, expiry, delay warnings,
forwarding, crash recovery and the smarthost."""

from __future__ import annotations

import email
import email.policy
import signal
import time

import pytest

from server.tlscert import make_self_signed
from tests.support.instance import PASSWORD, Instance, cli, free_port
from tests.support.sink import Sink


def message(n: int = 0, sender: str = "ann@example.test", to: str = "bob@remote.test") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: outbound {n}\r\n"
            f"Message-ID: <out-{n}-{time.time_ns()}@example.test>\r\n\r\nbody {n}\r\n").encode()


@pytest.fixture
def certs(tmp_path):
    make_self_signed("mx.remote.test", tmp_path / "sink-cert.pem", tmp_path / "sink-key.pem")
    return tmp_path / "sink-cert.pem", tmp_path / "sink-key.pem"


def instance(tmp_path, dns_server, port: int, extra: str = "") -> Instance:
    inst = Instance(tmp_path / "inst", dns_server.nameserver,
                    extra_config=f"[outbound]\nmx_port = {port}\n{extra}")
    inst.add_user("ann@example.test")
    return inst


def wait_until(predicate, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def queue_cli(inst: Instance, *args: str):
    return cli("-c", str(inst.config_path), "queue", *args)


def reports(inst: Instance, address: str = "ann@example.test"):
    parsed = [email.message_from_bytes(m, policy=email.policy.default)
              for m in inst.messages(address)]
    return [m for m in parsed if m.get_content_type() == "multipart/report"]


def test_remote_down_queued_then_delivered_after_flush(tmp_path, dns_server, certs):
    port = free_port()
    inst = instance(tmp_path, dns_server, port).start()
    try:
        assert inst.submit("ann@example.test", "bob@remote.test", message(1)) == {}
        listing = wait_until(lambda: "last error:" in (out := queue_cli(inst, "list").stdout)
                             and out, what="a failed attempt")
        assert "bob@remote.test" in listing and "attempts 1" in listing
        assert "Connection refused" in listing or "connect" in listing.lower()
        sink = Sink(port, tls_cert=certs).start()
        try:
            assert "retry every queued message" in queue_cli(inst, "flush").stdout
            [got] = sink.wait_for(1)
            assert b"Subject: outbound 1" in got.data and got.tls
            wait_until(lambda: "0 message(s) queued" in queue_cli(inst, "list").stdout,
                       what="an empty queue")
        finally:
            sink.stop()
    finally:
        inst.stop()


def test_permanent_failure_bounces_to_the_sender(tmp_path, dns_server, certs):
    sink = Sink(tls_cert=certs).start()
    sink.handler.reject.add("gone@remote.test")
    inst = instance(tmp_path, dns_server, sink.port).start()
    try:
        assert inst.submit("ann@example.test", ["gone@remote.test", "bob@remote.test"],
                           message(2, to="gone@remote.test")) == {}
        [got] = sink.wait_for(1)
        assert got.recipients == ["bob@remote.test"]  # one transaction, the other refused
        [dsn] = wait_until(lambda: reports(inst), what="a DSN")
        assert dsn["From"].addresses[0].addr_spec == "postmaster@example.test"
        assert dsn["Auto-Submitted"] == "auto-replied"
        parts = [p.get_content_type() for p in dsn.iter_parts()]
        assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
        text = dsn.as_bytes().decode("utf-8", "replace")
        assert "gone@remote.test" in text and "550 5.1.1" in text
        assert "Status: 5.1.1" in text and "Action: failed" in text
        assert "Subject: outbound 2" in text
        assert "body 2" not in text  # headers only, not the body
        stored = inst.messages("ann@example.test")[-1]
        assert stored.startswith(b"Return-Path: <>\r\n")
    finally:
        inst.stop()
        sink.stop()


def test_no_bounce_for_a_bounce(tmp_path, dns_server, certs):
    """A null-sender message that fails permanently is dropped, never bounced (RFC 5321 §6.1)."""
    sink = Sink(tls_cert=certs).start()
    sink.handler.reject.add("gone@remote.test")
    inst = instance(tmp_path, dns_server, sink.port)
    inst.add_alias("fwd@example.test", "gone@remote.test")
    inst.start()
    try:
        with inst.smtp() as client:
            client.sendmail("", ["fwd@example.test"],
                            message(3, sender="mailer-daemon@remote.test"))
        wait_until(lambda: "0 message(s) queued" in queue_cli(inst, "list").stdout
                   and "failed" in inst.log(), what="the forward to fail")
        assert "report" not in inst.log().split("failed")[-1]
        assert reports(inst) == []
        assert sink.messages == []
    finally:
        inst.stop()
        sink.stop()


def test_forwarding_through_the_queue(tmp_path, dns_server, certs):
    sink = Sink(tls_cert=certs).start()
    inst = instance(tmp_path, dns_server, sink.port)
    inst.add_alias("fwd@example.test", "ann@example.test", "bob@remote.test")
    inst.start()
    try:
        msg = message(4, sender="carol@remote.test", to="fwd@example.test")
        assert inst.send("fwd@example.test", msg, sender="carol@remote.test") == {}
        [got] = sink.wait_for(1)
        assert got.sender == "carol@remote.test" and got.recipients == ["bob@remote.test"]
        assert got.data.endswith(msg)
        assert len(inst.messages("ann@example.test")) == 1
    finally:
        inst.stop()
        sink.stop()


def test_deferred_then_expired_with_delay_warning(tmp_path, dns_server, certs):
    sink = Sink(tls_cert=certs).start()
    sink.handler.defer.add("slow@remote.test")
    inst = instance(tmp_path, dns_server, sink.port,
                    "expiry = 3\ndelay_warning = 1\n").start()
    try:
        assert inst.submit("ann@example.test", "slow@remote.test", message(5)) == {}
        wait_until(lambda: "451 4.3.0" in queue_cli(inst, "list").stdout, what="a deferral")
        time.sleep(1.2)
        queue_cli(inst, "flush")
        delayed = wait_until(lambda: reports(inst), what="a delay warning")
        assert "Delayed" in delayed[0]["Subject"]
        assert "Action: delayed" in delayed[0].as_string()
        time.sleep(2)
        queue_cli(inst, "flush")
        both = wait_until(lambda: len(r := reports(inst)) >= 2 and r, what="the final DSN")
        final = both[-1].as_string()
        assert "Action: failed" in final and "Gave up after" in final
        queue_cli(inst, "flush")
        time.sleep(0.5)
        assert len(reports(inst)) == 2  # one warning, one failure, nothing twice
        assert "0 message(s) queued" in queue_cli(inst, "list").stdout
    finally:
        inst.stop()
        sink.stop()


def test_kill_9_with_queued_messages_delivers_each_once(tmp_path, dns_server, certs):
    port = free_port()
    inst = instance(tmp_path, dns_server, port).start()
    for n in range(5):
        assert inst.submit("ann@example.test", "bob@remote.test", message(10 + n)) == {}
    wait_until(lambda: queue_cli(inst, "list").stdout.count("attempts 1") == 5,
               what="five failed attempts")
    inst.signal(signal.SIGKILL)
    inst.wait(10)
    sink = Sink(port, tls_cert=certs).start()
    try:
        inst.start()
        queue_cli(inst, "flush")
        got = sink.wait_for(5)
        time.sleep(0.5)
        subjects = sorted(m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in sink.messages)
        assert subjects == [f"outbound {10 + n}".encode() for n in range(5)]
        assert len(got) == 5
    finally:
        inst.stop()
        sink.stop()


def test_queue_cli_show_and_delete(tmp_path, dns_server):
    inst = instance(tmp_path, dns_server, free_port()).start()
    try:
        inst.submit("ann@example.test", "bob@remote.test", message(20))
        [msg] = wait_until(lambda: inst.spool().list(), what="a queued message")
        shown = queue_cli(inst, "show", msg.id, "--message").stdout
        assert f"id:        {msg.id}" in shown and "origin:    submission ann@example.test" in shown
        assert "Subject: outbound 20" in shown
        assert "deleted" in queue_cli(inst, "delete", msg.id).stdout
        assert inst.spool().list() == []
        bad = cli("-c", str(inst.config_path), "queue", "show", "../../etc/passwd", check=False)
        assert bad.returncode == 1 and "no queued message" in bad.stderr
    finally:
        inst.stop()


def test_smarthost_with_auth_over_tls(tmp_path, dns_server, certs):
    cert, key = certs
    make_self_signed("relay.example.net", tmp_path / "relay-cert.pem", tmp_path / "relay-key.pem")
    relay = Sink(tls_cert=(tmp_path / "relay-cert.pem", tmp_path / "relay-key.pem"),
                 implicit_tls=True, auth=("ann-at-provider", "relay secret")).start()
    inst = instance(tmp_path, dns_server, free_port(),
                    f'relay = "127.0.0.1:{relay.port}"\nrelay_tls = "tls"\n'
                    'relay_username = "ann-at-provider"\nrelay_password = "relay secret"\n'
                    f'ca_file = "{tmp_path / "relay-cert.pem"}"\n').start()
    try:
        assert inst.submit("ann@example.test", "bob@remote.test", message(30)) == {}
        [got] = relay.wait_for(1)
        assert got.auth == b"ann-at-provider" and got.tls
        assert got.recipients == ["bob@remote.test"]
    finally:
        inst.stop()
        relay.stop()


def test_smarthost_certificate_is_verified(tmp_path, dns_server, certs):
    """Credentials go only to a relay whose certificate verifies: no CA file, no delivery."""
    relay = Sink(tls_cert=certs, implicit_tls=True, auth=("u", "p")).start()
    inst = instance(tmp_path, dns_server, free_port(),
                    f'relay = "127.0.0.1:{relay.port}"\nrelay_tls = "tls"\n'
                    'relay_username = "u"\nrelay_password = "p"\n').start()
    try:
        inst.submit("ann@example.test", "bob@remote.test", message(31))
        listing = wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in (
            out := queue_cli(inst, "list").stdout) and out, what="a verification failure")
        assert "bob@remote.test" in listing
        assert relay.messages == []
        assert PASSWORD not in inst.log() and "relay secret" not in inst.log()
    finally:
        inst.stop()
        relay.stop()


# --- MTA-STS (RFC 8461) ---


POLICY = "version: STSv1\r\nmode: enforce\r\nmx: {mx}\r\nmax_age: 86400\r\n"


@pytest.fixture
def sts(tmp_path):
    """A loopback DNS server and HTTPS policy host for remote.test, with a test CA."""
    from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
    from tests.support.httpsserver import HTTPSTestServer, TestCA, http_response

    ca = TestCA()
    ca_file = ca.write(tmp_path / "ca.pem")
    web_cert = ca.issue(tmp_path, "mta-sts.remote.test")
    mx_cert = ca.issue(tmp_path, "mx.remote.test")
    with DNSTestServer(DEFAULT_ZONE) as dns, HTTPSTestServer(*web_cert) as web:
        dns.set("_mta-sts.remote.test", "TXT", "v=STSv1; id=20261128")
        dns.set("mta-sts.remote.test", "A", "127.0.0.1")

        def publish(mx: str) -> None:
            web.response = http_response(POLICY.format(mx=mx).encode())

        yield dns, web, publish, ca_file, mx_cert


def sts_instance(tmp_path, dns, port: int, web, ca_file: str) -> Instance:
    return instance(tmp_path, dns, port,
                    f'https_port = {web.port}\nca_file = "{ca_file}"\n').start()


def test_mta_sts_enforce_delivers_over_verified_tls(tmp_path, sts):
    dns, web, publish, ca_file, mx_cert = sts
    publish("mx.remote.test")
    sink = Sink(tls_cert=mx_cert).start()
    inst = sts_instance(tmp_path, dns, sink.port, web, ca_file)
    try:
        inst.submit("ann@example.test", "bob@remote.test", message(40))
        [got] = sink.wait_for(1)
        assert got.tls
        assert [r.path for r in web.requests] == ["/.well-known/mta-sts.txt"]
        assert "mta-sts fetch remote.test id=20261128 mode=enforce" in inst.log()
    finally:
        inst.stop()
        sink.stop()


def test_mta_sts_enforce_refuses_unverified_certificate(tmp_path, sts, certs):
    dns, web, publish, ca_file, _ = sts
    publish("mx.remote.test")
    sink = Sink(tls_cert=certs).start()  # self-signed: fine opportunistically, not under STS
    inst = sts_instance(tmp_path, dns, sink.port, web, ca_file)
    try:
        inst.submit("ann@example.test", "bob@remote.test", message(41))
        wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in queue_cli(inst, "list").stdout,
                   what="a verification failure")
        assert sink.messages == []  # and never in the clear as a fallback
    finally:
        inst.stop()
        sink.stop()


def test_mta_sts_enforce_refuses_mx_not_in_policy(tmp_path, sts):
    dns, web, publish, ca_file, mx_cert = sts
    publish("mail.other.test")
    sink = Sink(tls_cert=mx_cert).start()
    inst = sts_instance(tmp_path, dns, sink.port, web, ca_file)
    try:
        inst.submit("ann@example.test", "bob@remote.test", message(42))
        wait_until(lambda: "4.7.5" in queue_cli(inst, "list").stdout, what="a policy refusal")
        assert sink.messages == []
    finally:
        inst.stop()
        sink.stop()


# --- the client's corner cases ---


def test_failed_opportunistic_tls_falls_back_to_plaintext(tmp_path, dns_server, certs):
    sink = Sink(tls_cert=certs, broken_tls=True).start()
    inst = instance(tmp_path, dns_server, sink.port).start()
    try:
        inst.submit("ann@example.test", "bob@remote.test", message(50))
        [got] = sink.wait_for(1)
        assert not got.tls
        assert "TLS handshake failed" in inst.log()
    finally:
        inst.stop()
        sink.stop()


def test_utf8_address_to_a_server_without_smtputf8_bounces(tmp_path, dns_server, certs):
    sink = Sink(tls_cert=certs, smtputf8=False).start()
    inst = instance(tmp_path, dns_server, sink.port).start()
    try:
        inst.submit("ann@example.test", "jörg@remote.test", message(51),
                    mail_options=("SMTPUTF8",))
        [report] = wait_until(lambda: reports(inst), what="a DSN")
        assert "5.6.7" in report.as_string()
        assert sink.messages == []
    finally:
        inst.stop()
        sink.stop()


def test_second_instance_on_the_same_data_dir_refuses_to_start(tmp_path, dns_server):
    import subprocess

    from tests.support.instance import MAILSTEAD

    inst = instance(tmp_path, dns_server, free_port()).start()
    try:
        proc = subprocess.run([*MAILSTEAD, "-c", str(inst.config_path), "run"],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1
        assert "another mailstead is running on it" in proc.stderr
    finally:
        inst.stop()
    stale = cli("-c", str(inst.config_path), "queue", "flush", check=False)
    assert stale.returncode == 1 and "not running" in stale.stderr
