"""Delivery over a real SMTP dialogue to users, aliases, plus-addresses and catch-alls."""

from __future__ import annotations

import smtplib
import socket
import struct

import pytest

from tests.support.rawsmtp import RawSMTP

MSG = (b"From: Bob <bob@remote.test>\r\nTo: someone\r\nSubject: hello\r\n"
       b"Message-ID: <m1@remote.test>\r\n\r\nHello there.\r\n")


def body_of(stored: bytes) -> bytes:
    """The message without the trace headers mailstead prepends."""
    return stored[stored.index(b"From: Bob"):]


def test_delivery_to_user_with_trace_headers(mx):
    mx.add_user("ann@example.test")
    refused = mx.send("ann@example.test", MSG)
    assert refused == {}
    [stored] = mx.messages("ann@example.test")
    assert body_of(stored) == MSG  # byte-exact, CRLF kept
    lines = stored.split(b"\r\n")
    assert lines[0] == b"Return-Path: <bob@remote.test>"
    assert lines[1] == b"Delivered-To: ann@example.test"
    assert lines[2].startswith(b"Received: from client.remote.test "
                               b"(localhost.example.test [127.0.0.1])")
    received = stored[stored.index(b"Received:"):stored.index(b"From: Bob")].decode()
    assert "by mail.example.test (mailstead) with ESMTPS id " in received
    assert "for <ann@example.test>;" in received
    assert "TLSv1." in received


def test_address_case_is_ignored(mx):
    mx.add_user("Carol@Example.TEST")
    assert mx.send("CAROL@example.Test", MSG) == {}
    assert len(mx.messages("carol@example.test")) == 1


def test_alias_with_two_destinations(mx):
    mx.add_user("dan@example.test")
    mx.add_user("eve@example.test")
    mx.add_alias("team@example.test", "dan@example.test", "eve@example.test")
    assert mx.send("team@example.test", MSG) == {}
    for who in ("dan", "eve"):
        [stored] = mx.messages(f"{who}@example.test")
        assert body_of(stored) == MSG
        assert f"Delivered-To: {who}@example.test".encode() in stored
        assert b"for <team@example.test>;" in stored


def test_plus_address(mx):
    mx.add_user("fay@example.test")
    assert mx.send("fay+lists@example.test", MSG) == {}
    [stored] = mx.messages("fay@example.test")
    assert b"for <fay+lists@example.test>;" in stored


def test_catch_all(fresh):
    fresh.add_user("gus@example.test")
    fresh.add_alias("@example.test", "gus@example.test")
    fresh.start()
    assert fresh.send(["anything@example.test", "other.name@example.test"], MSG) == {}
    assert len(fresh.messages("gus@example.test")) == 1  # one copy per mailbox


def test_postmaster_reaches_admins_without_domain(fresh):
    fresh.add_user("boss@example.test", admin=True)
    fresh.start()
    with fresh.smtp() as client:
        client.ehlo()
        assert client.mail("")[0] == 250  # the null sender of a bounce
        assert client.rcpt("Postmaster")[0] == 250  # RFC 5321 §4.1.1.3
        assert client.rcpt("abuse@example.test")[0] == 250
        assert client.data(MSG)[0] == 250
    [stored] = fresh.messages("boss@example.test")
    assert stored.startswith(b"Return-Path: <>\r\n")


def test_several_recipients_one_copy_each(mx):
    for who in ("hal", "ivy"):
        mx.add_user(f"{who}@example.test")
    with mx.smtp() as client:
        client.starttls(context=mx.tls_context())
        client.ehlo()
        client.mail("bob@remote.test")
        for rcpt in ("hal@example.test", "ivy@example.test", "hal+x@example.test"):
            assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(MSG)
        assert code == 250 and text.startswith(b"2.0.0 ")
        # 250 is sent only after every copy is on disk: they are visible right now.
        assert len(mx.messages("hal@example.test")) == 1
        assert len(mx.messages("ivy@example.test")) == 1


@pytest.mark.parametrize("rcpt", ["nobody@example.test", "nobody+tag@example.test"])
def test_unknown_user(mx, rcpt):
    with mx.smtp() as client:
        client.ehlo()
        client.mail("bob@remote.test")
        code, text = client.rcpt(rcpt)
    assert (code, text[:5]) == (550, b"5.1.1")


def test_disabled_mailbox(mx):
    mx.add_user("jim@example.test")
    store = mx.accounts
    store.update_user("jim@example.test", disabled=True)
    store.close()
    with mx.smtp() as client:
        client.ehlo()
        client.mail("bob@remote.test")
        assert client.rcpt("jim@example.test")[:1] == (550,)
        assert client.rcpt("jim@example.test")[1].startswith(b"5.2.1")


def test_external_alias_destination_is_queued(mx):
    mx.add_user("kim@example.test")
    mx.add_alias("fwd@example.test", "kim@example.test", "kim@elsewhere.test")
    with mx.smtp() as client:
        client.ehlo()
        client.mail("bob@remote.test")
        assert client.rcpt("fwd@example.test")[0] == 250
        code, text = client.data(MSG)
        assert code == 250 and b"queued as" in text
    assert len(mx.messages("kim@example.test")) == 1
    queued = [m for m in mx.spool().list() if m.recipients[0].address == "kim@elsewhere.test"]
    assert len(queued) == 1 and queued[0].sender == "bob@remote.test"
    assert mx.spool().read_message(queued[0].id).endswith(MSG)  # forwarded unchanged


def test_null_sender_and_utf8(mx):
    mx.add_user("lea@example.test")
    body = "Subject: Grüße\r\nFrom: jörg@remote.test\r\n\r\nHällo\r\n".encode()
    with mx.smtp() as client:
        client.ehlo()
        assert client.mail("jörg@remote.test", ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250
        assert client.rcpt("lea@example.test")[0] == 250
        assert client.data(body)[0] == 250
    [stored] = mx.messages("lea@example.test")
    assert stored.endswith(body)
    assert "Return-Path: <jörg@remote.test>".encode() in stored
    assert b"with UTF8SMTP id" in stored


def test_sender_syntax_is_checked(mx):
    with mx.smtp() as client:
        client.ehlo()
        code, text = client.mail("bob@-bad-.test")
    assert code == 553 and text.startswith(b"5.1.7")


def test_transaction_log_line(mx):
    mx.add_user("max@example.test")
    assert mx.send("max@example.test", MSG) == {}
    log = mx.wait_for_log(
        "mx client=[127.0.0.1] from=<bob@remote.test> rcpts=1 mailboxes=1 remote=0 size=")
    line = [ln for ln in log.splitlines() if "mailboxes=1" in ln][-1]
    assert "conn=" in line and "result=250 2.0.0" in line
    # The session's other line, at its end, says who it was; no line of its own at connect.
    conn = line.split("conn=", 1)[1].split()[0]
    log = mx.wait_for_log(f"conn={conn} disconnect from [127.0.0.1] after ")
    [end] = [ln for ln in log.splitlines() if f"conn={conn} disconnect" in ln]
    assert end.endswith("errors=0 transactions=1")
    assert f"conn={conn} connect from" not in log


def test_helo_client_gets_smtp_protocol(mx):
    mx.add_user("ned@example.test")
    client = smtplib.SMTP("127.0.0.1", mx.mx_port, local_hostname="old.remote.test")
    client.helo()
    client.sendmail("bob@remote.test", ["ned@example.test"], MSG)
    client.quit()
    [stored] = mx.messages("ned@example.test")
    assert b"Received: from old.remote.test" in stored
    assert b" with SMTP id " in stored


def _data_segments_in(sock) -> int:
    """tcpi_data_segs_in of Linux's struct tcp_info: segments that carried data to us."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
    return struct.unpack_from("I", info, 152)[0]


def test_a_multi_line_reply_comes_in_one_write(mx):
    """RFC 5321 §4.2.1 lets a reply span lines; the EHLO answer (six of them) is written at
    once: one segment, one wake-up of the client, instead of one per line."""
    with RawSMTP(mx.mx_port) as c:
        assert c.reply()[0] == 220
        before = _data_segments_in(c.sock)
        code, lines = c.cmd("EHLO client.remote.test")
        assert code == 250 and len(lines) > 3
        assert _data_segments_in(c.sock) - before == 1
        assert c.cmd("NOOP")[0] == 250
