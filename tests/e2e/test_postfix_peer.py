"""The Postfix peer fixture: a private Postfix on loopback as the MX of remote.test."""

from __future__ import annotations

import hashlib
import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.support.postfix import PostfixPeer, require_postfix

pytestmark = pytest.mark.e2e

MESSAGE = (b"From: Sam <sam@example.test>\r\nTo: Bob <bob@remote.test>\r\n"
           b"Subject: to the postfix peer\r\n"
           b"Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
           b"Message-ID: <peer-test@example.test>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n"
           + "Grüße, ünïcödé.\r\n.a line starting with a dot\r\n.\r\n\r\nlast\r\n".encode())


@pytest.fixture
def peer(tmp_path):
    require_postfix()
    with PostfixPeer(tmp_path / "postfix", reject=["bounce@remote.test"]) as p:
        yield p


def send(peer: PostfixPeer, rcpts: list[str], data: bytes = MESSAGE, starttls: bool = False,
         sender: str = "sam@example.test") -> dict:
    with smtplib.SMTP("127.0.0.1", peer.port, local_hostname="mail.example.test",
                      timeout=10) as client:
        if starttls:
            client.starttls(context=ssl.create_default_context(cafile=str(peer.cert_file)))
        return client.sendmail(sender, rcpts, data)


def headers(message: bytes) -> bytes:
    return message.partition(b"\n\n")[0]


def test_plain_smtp_delivery_is_stored_as_sent(peer):
    assert send(peer, ["bob@remote.test"]) == {}
    [stored] = peer.messages(timeout=20)
    # Postfix prepends its trace headers and stores LF line ends; the rest is what was sent.
    assert stored.startswith(b"Return-Path: <sam@example.test>\nX-Original-To: bob@remote.test\n"
                             b"Delivered-To: bob@remote.test\nReceived: from mail.example.test ")
    assert b"by mx.remote.test (Postfix) with ESMTP id" in stored
    assert stored.endswith(MESSAGE.replace(b"\r\n", b"\n"))
    assert PostfixPeer.as_sent(stored) == MESSAGE
    assert peer.messages() == [stored]
    assert peer.messages(timeout=0.2) == [stored]  # nothing new: returns after the timeout
    peer.wait_for_log("status=sent (delivered to maildir)")


def test_starttls_with_the_self_signed_certificate(peer):
    with smtplib.SMTP("127.0.0.1", peer.port, timeout=10) as client:
        assert "starttls" in client.ehlo()[1].decode().lower()
        # Verified against cert_file: the SAN IP:127.0.0.1 matches the address dialled.
        client.starttls(context=ssl.create_default_context(cafile=str(peer.cert_file)))
        assert client.sock.version().startswith("TLSv1.")
        assert client.sendmail("sam@example.test", ["carol@remote.test"], MESSAGE) == {}
    [stored] = peer.wait_for(lambda m: b"Delivered-To: carol@remote.test\n" in m)
    assert b"with ESMTPS id" in headers(stored)
    assert b"(using TLSv1." in headers(stored)
    assert PostfixPeer.as_sent(stored) == MESSAGE
    peer.wait_for_log("Anonymous TLS connection established from")


def test_every_recipient_lands_in_the_one_maildir(peer):
    assert send(peer, ["a@remote.test", "B@Remote.Test"], starttls=True) == {}
    stored = peer.wait_for(lambda m: True, count=2)
    # One copy per recipient, each with its own Delivered-To (in the case the client used).
    assert sorted(m.split(b"\n")[2] for m in stored) == [b"Delivered-To: B@Remote.Test",
                                                         b"Delivered-To: a@remote.test"]
    assert all(PostfixPeer.as_sent(m) == MESSAGE for m in stored)
    assert len(list((peer.maildir / "new").iterdir())) == 2


def test_rejected_recipient_gets_550(peer):
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(peer, ["bounce@remote.test"])
    code, text = refused.value.recipients["bounce@remote.test"]
    assert code == 550
    assert text.startswith(b"5.1.1 ")
    # In a mixed transaction only the listed recipient is refused.
    assert send(peer, ["bounce@remote.test", "ok@remote.test"]) == {
        "bounce@remote.test": (code, text)}
    [stored] = peer.messages(timeout=20)
    assert b"Delivered-To: ok@remote.test\n" in stored
    peer.wait_for_log("NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 550 5.1.1")


def test_relays_nothing_and_has_no_way_out(peer):
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(peer, ["x@elsewhere.test"])
    code, text = refused.value.recipients["x@elsewhere.test"]
    assert (code, text) == (554, b"5.7.1 <x@elsewhere.test>: Relay access denied")
    assert peer.messages(timeout=0.3) == []
    # No service in master.cf can send mail, every transport but virtual is error:, no DNS.
    postconf = ["postconf", "-c", str(peer.config_dir)]
    services = subprocess.run([*postconf, "-M"], capture_output=True, text=True, check=True)
    commands = {line.split()[7] for line in services.stdout.splitlines()}
    assert commands.isdisjoint({"smtp", "lmtp", "local", "pipe", "pickup", "postscreen"})
    params = subprocess.run([*postconf, "-h", "relayhost", "default_transport", "relay_transport",
                             "inet_interfaces", "smtp_dns_support_level", "disable_dns_lookups"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert params[0] == ""
    assert params[1].startswith("error:") and params[2].startswith("error:")
    assert params[3:] == ["127.0.0.1", "disabled", "yes"]


def test_stop_refuses_connections_and_restart_accepts_again(peer):
    assert send(peer, ["before@remote.test"]) == {}
    peer.messages(timeout=20)
    peer.stop()
    with pytest.raises(ConnectionRefusedError):
        send(peer, ["down@remote.test"])
    peer.start()
    assert send(peer, ["after@remote.test"]) == {}
    peer.wait_for(lambda m: b"Delivered-To: after@remote.test\n" in m)
    peer.restart()
    assert send(peer, ["again@remote.test"], starttls=True) == {}
    stored = peer.wait_for(lambda m: True, count=3)
    assert [m.split(b"\n")[2] for m in stored] == [b"Delivered-To: before@remote.test",
                                                   b"Delivered-To: after@remote.test",
                                                   b"Delivered-To: again@remote.test"]


def system_postfix() -> tuple[int | None, dict[str, tuple[int, int, str]]]:
    """The system Postfix's running master (if any) and the state of /etc/postfix."""
    pid = None
    try:
        pid = int(Path("/var/spool/postfix/pid/master.pid").read_text().split()[0])
        if Path(f"/proc/{pid}/comm").read_text().strip() != "master":
            pid = None
    except (OSError, ValueError, IndexError):
        pid = None
    files = {}
    for path in sorted(Path("/etc/postfix").rglob("*")):
        if path.is_file():
            st = path.stat()
            files[str(path)] = (st.st_mtime_ns, st.st_ctime_ns,
                                hashlib.sha256(path.read_bytes()).hexdigest())
    return pid, files


def test_stop_leaves_nothing_running_and_the_system_postfix_alone(tmp_path):
    require_postfix()
    before = system_postfix()
    peer = PostfixPeer(tmp_path / "postfix").start()
    try:
        pids = peer.pids()
        assert peer.master_pid in pids and len(pids) >= 2  # master and its services
        assert send(peer, ["bob@remote.test"]) == {}
        peer.messages(timeout=20)
        pids = sorted(set(pids) | set(peer.pids()))  # the smtpd and virtual now, too
    finally:
        peer.stop()
    assert peer.pids() == []
    ps = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True,
                        check=True).stdout.splitlines()
    alive = [line for line in ps if int(line.split()[0]) in pids and line.split()[1][0] != "Z"]
    assert alive == []
    status = subprocess.run(["postfix", "-c", str(peer.config_dir), "status"],
                            capture_output=True, text=True)
    assert status.returncode != 0  # "the Postfix mail system is not running"
    with pytest.raises(ConnectionRefusedError):
        send(peer, ["bob@remote.test"])
    # A running system Postfix is still the same process, and nothing in /etc/postfix changed.
    assert system_postfix() == before
