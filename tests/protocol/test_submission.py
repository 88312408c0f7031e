"""Submission (RFC 6409) on the STARTTLS and implicit-TLS ports: AUTH, sender ownership,
fix-ups, DKIM, local delivery and handing remote mail to the outbound queue."""

from __future__ import annotations

import email
import email.policy
import smtplib
import time

import dkim
import pytest

from tests.support.instance import PASSWORD, Instance
from tests.support.rawsmtp import RawSMTP
from tests.support.sink import Sink

MSG = (b"From: Ann <ann@example.test>\r\nTo: Bob <bob@remote.test>\r\n"
       b"Bcc: secret@remote.test\r\nSubject: hello from ann\r\n\r\nHi Bob.\r\n")


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    from server.tlscert import make_self_signed

    certs = tmp_path_factory.mktemp("sink-tls")
    make_self_signed("mx.remote.test", certs / "cert.pem", certs / "key.pem")
    s = Sink(tls_cert=(certs / "cert.pem", certs / "key.pem")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def inst(tmp_path_factory, dns_server, sink):
    i = Instance(tmp_path_factory.mktemp("sub"), dns_server.nameserver,
                 extra_config=f"[outbound]\nmx_port = {sink.port}\n")
    i.add_user("ann@example.test")
    i.add_user("cat@example.test")
    i.add_alias("sales@example.test", "ann@example.test", "cat@example.test")
    i.start()
    # Publish the DKIM key so the test can verify signatures as a receiver would.
    for key in _keys(i):
        dns_server.set(key.record_name, "TXT", key.txt_value())
    yield i
    i.stop()


def _keys(inst):
    from server import dkimkeys

    return dkimkeys.keys_for(inst.data_dir / "dkim", "example.test")


def _verify(message: bytes, dns_server) -> bool:
    resolver = dns_server.resolver()

    def dnsfunc(name, timeout=5):
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(rr.strings) for rr in answer)

    return dkim.verify(message, dnsfunc=dnsfunc)


def test_starttls_auth_and_remote_delivery(inst, sink, dns_server):
    before = len(sink.messages)
    assert inst.submit("ann@example.test", "bob@remote.test", MSG) == {}
    [got] = sink.wait_for(before + 1)[before:]
    assert got.sender == "ann@example.test" and got.recipients == ["bob@remote.test"]
    assert got.tls  # STARTTLS was offered by the sink and used
    data = got.data
    assert b"Bcc:" not in data and b"secret@remote.test" not in data
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Message-ID"] and parsed["Date"]  # added for the client
    assert parsed["DKIM-Signature"] and "d=example.test" in parsed["DKIM-Signature"]
    assert _verify(data, dns_server)
    received = parsed.get_all("Received")
    assert received[0].startswith("by mail.example.test (mailstead) with ESMTPSA id")
    assert "127.0.0.1" not in data.decode()  # the client's address is not revealed


def test_implicit_tls_auth(inst, sink):
    before = len(sink.messages)
    assert inst.submit("ann@example.test", "bob@remote.test", MSG, implicit_tls=True) == {}
    sink.wait_for(before + 1)


def test_auth_login_mechanism(inst):
    client = smtplib.SMTP("127.0.0.1", inst.submission_port, timeout=10)
    client.starttls(context=inst.tls_context())
    client.ehlo()
    assert "LOGIN" in client.esmtp_features["auth"] and "PLAIN" in client.esmtp_features["auth"]
    client.user, client.password = "ann@example.test", PASSWORD
    code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
    assert code == 235
    client.quit()


def test_nothing_before_starttls(inst):
    with RawSMTP(inst.submission_port) as c:
        c.reply()
        code, lines = c.cmd("EHLO laptop.example.test")
        assert not any(k.startswith("AUTH") for k in lines) and "STARTTLS" in lines
        for command in ("AUTH PLAIN AGFubkBleGFtcGxlLnRlc3QAeA==", "MAIL FROM:<ann@example.test>"):
            code, text = c.cmd(command)
            assert (code, text[0][:5]) == (530, "5.7.0"), command


def test_mail_requires_auth(inst):
    client = smtplib.SMTP("127.0.0.1", inst.submission_port, timeout=10)
    client.starttls(context=inst.tls_context())
    client.ehlo()
    code, text = client.mail("ann@example.test")
    assert (code, text[:5]) == (530, b"5.7.0")
    client.quit()


def test_wrong_password_and_growing_delay(tmp_path, dns_server):
    # An instance of its own: the failures below slow every later login from 127.0.0.1.
    inst = Instance(tmp_path, dns_server.nameserver,
                    extra_config="auth_failure_delay = 0.3\n")
    inst.add_user("cat@example.test")
    inst.start()
    try:
        _wrong_passwords(inst)
    finally:
        inst.stop()


def _wrong_passwords(inst):
    client = smtplib.SMTP_SSL("127.0.0.1", inst.submissions_port, timeout=30,
                              context=inst.tls_context())
    client.ehlo()
    client.user, client.password = "cat@example.test", "not the password"
    timings = []
    for _ in range(4):
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.auth("PLAIN", client.auth_plain)
        timings.append(time.monotonic() - started)
        assert info.value.smtp_code == 535
        assert info.value.smtp_error.startswith(b"5.7.8")
    client.quit()
    # FREE_FAILURES are answered at once, then 0.3 s, then 0.6 s (auth_failure_delay = 0.3).
    assert timings[2] >= 0.25 and timings[3] >= 0.55
    assert max(timings[:2]) < 0.25
    # The right password waits as long now: a quick success would give the password away.
    started = time.monotonic()
    client = smtplib.SMTP_SSL("127.0.0.1", inst.submissions_port, timeout=30,
                              context=inst.tls_context())
    client.login("cat@example.test", PASSWORD)
    assert time.monotonic() - started >= 1.1  # 0.3 * 2**(4 - 2)
    client.quit()
    log = inst.log()
    assert "auth failed user='cat@example.test'" in log
    assert "not the password" not in log and PASSWORD not in log


@pytest.mark.parametrize("sender", ["cat@example.test", "ann@remote.test", "<>"])
def test_envelope_sender_must_be_owned(inst, sender):
    client = smtplib.SMTP("127.0.0.1", inst.submission_port, timeout=10)
    client.starttls(context=inst.tls_context())
    client.login("ann@example.test", PASSWORD)
    code, text = client.mail("" if sender == "<>" else sender)
    assert (code, text[:5]) == (553, b"5.7.1")
    client.quit()


def test_from_header_must_be_owned(inst):
    spoofed = MSG.replace(b"From: Ann <ann@example.test>", b"From: Cat <cat@example.test>")
    with pytest.raises(smtplib.SMTPDataError) as info:
        inst.submit("ann@example.test", "bob@remote.test", spoofed)
    assert info.value.smtp_code == 553 and info.value.smtp_error.startswith(b"5.7.1")


def test_plus_address_and_alias_are_owned(inst, sink):
    before = len(sink.messages)
    for sender in ("ann+news@example.test", "sales@example.test"):
        msg = MSG.replace(b"ann@example.test", sender.encode())
        assert inst.submit("ann@example.test", "bob@remote.test", msg, sender=sender) == {}
    sink.wait_for(before + 2)


def test_local_recipient_delivered_locally(inst, dns_server):
    msg = MSG.replace(b"To: Bob <bob@remote.test>", b"To: Cat <cat@example.test>")
    assert inst.submit("ann@example.test", "cat@example.test", msg) == {}
    stored = inst.messages("cat@example.test")[-1]
    assert stored.startswith(b"Return-Path: <ann@example.test>\r\nDelivered-To: cat@example.test")
    body = stored[stored.index(b"DKIM-Signature"):]
    assert _verify(body, dns_server)
    assert b"Bcc:" not in stored


def test_remote_unknown_is_queued_local_unknown_refused(inst):
    client = smtplib.SMTP("127.0.0.1", inst.submission_port, timeout=10)
    client.starttls(context=inst.tls_context())
    client.login("ann@example.test", PASSWORD)
    client.mail("ann@example.test")
    assert client.rcpt("nobody@example.test")[0] == 550
    assert client.rcpt("anyone@remote.test")[0] == 250  # relaying is what submission is for
    assert client.rcpt("x@[192.0.2.1]")[0] == 550
    client.quit()


def test_ed25519_second_signature(tmp_path, dns_server):
    """Switched on after init: the key is made at start, and both signatures verify."""
    inst = Instance(tmp_path, dns_server.nameserver, extra_config="[dkim]\ned25519 = true\n")
    inst.add_user("dee@example.test")
    inst.start()
    try:
        keys = _keys(inst)
        assert sorted(k.algorithm for k in keys) == ["ed25519", "rsa"]
        assert "new DKIM key for example.test: publish" in inst.log()
        for key in keys:
            dns_server.set(key.record_name, "TXT", key.txt_value())
        msg = MSG.replace(b"ann@example.test", b"dee@example.test")
        assert inst.submit("dee@example.test", "dee@example.test", msg) == {}
        stored = inst.messages("dee@example.test")[-1]
        signed = stored[stored.index(b"DKIM-Signature"):]
        resolver = dns_server.resolver()

        def dnsfunc(name, timeout=5):
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
            return b"".join(b"".join(rr.strings) for rr in answer)

        verifier = dkim.DKIM(signed)
        assert [verifier.verify(idx=i, dnsfunc=dnsfunc) for i in (0, 1)] == [True, True]
        assert b"a=rsa-sha256" in signed and b"a=ed25519-sha256" in signed
    finally:
        inst.stop()
