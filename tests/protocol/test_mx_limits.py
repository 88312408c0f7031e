"""Limits, hostile input and protocol hygiene on the MX, over real sockets."""

from __future__ import annotations

import re
import ssl
import time

import pytest

from tests.support.rawsmtp import RawSMTP

MSG = b"From: bob@remote.test\r\nSubject: limits\r\n\r\nbody\r\n"
ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def session(port: int) -> RawSMTP:
    c = RawSMTP(port)
    code, _ = c.reply()
    assert code == 220
    return c


def test_ehlo_keywords(mx):
    with session(mx.mx_port) as c:
        code, lines = c.cmd("EHLO client.remote.test")
        assert code == 250
        assert lines[0] == "mail.example.test"
        assert set(lines[1:]) == {"SIZE 52428800", "8BITMIME", "SMTPUTF8", "STARTTLS",
                                  "PIPELINING", "ENHANCEDSTATUSCODES"}
        assert c.cmd("STARTTLS")[0] == 220
        c.starttls(mx.tls_context())
        code, lines = c.cmd("EHLO client.remote.test")
        assert "STARTTLS" not in lines and not any(k.startswith("AUTH") for k in lines)


def test_every_reply_has_an_enhanced_code(mx):
    mx.add_user("enh@example.test")
    commands = ["NOOP", "RSET", "VRFY enh@example.test", "VRFY nobody@example.test",
                "EXPN list", "HELP", "BOGUS", "MAIL FROM:<bad", "RCPT TO:<x@example.test>",
                "DATA", "MAIL FROM:<bob@remote.test>", "MAIL FROM:<bob@remote.test>",
                "RCPT TO:<enh@example.test> NOTIFY=NEVER", "AUTH PLAIN", "STARTTLS extra",
                "RCPT TO:<enh@example.test>", "RSET", "QUIT"]
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        for command in commands:
            c.send(command.encode() + b"\r\n")
            for line in c.raw_reply_lines():
                assert ENHANCED.match(line), (command, line)


def test_vrfy_does_not_reveal_users(mx):
    mx.add_user("secret@example.test")
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        assert c.cmd("VRFY secret@example.test") == c.cmd("VRFY nobody@example.test")


def test_auth_is_not_offered_on_the_mx(mx):
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        code, text = c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
        assert (code, text[0][:5]) == (503, "5.5.1")


def test_pipelining(mx):
    mx.add_user("pipe@example.test")
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        c.send(b"MAIL FROM:<bob@remote.test>\r\nRCPT TO:<pipe@example.test>\r\n"
               b"RCPT TO:<nobody@example.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(4)] == [250, 250, 550, 354]
        c.send(MSG + b".\r\nQUIT\r\n")
        assert [c.reply()[0] for _ in range(2)] == [250, 221]
    assert len(mx.messages("pipe@example.test")) == 1


def test_starttls_discards_pipelined_plaintext(mx):
    """Commands sent in the clear after STARTTLS must not run inside TLS (CVE-2011-0411 and
    aiosmtpd CVE-2024-34083)."""
    mx.add_user("tls@example.test")
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        c.send(b"STARTTLS\r\nMAIL FROM:<injected@remote.test>\r\nRCPT TO:<tls@example.test>\r\n")
        assert c.reply()[0] == 220
        c.starttls(mx.tls_context())
        assert c.cmd("EHLO client.remote.test")[0] == 250
        # Had the injected MAIL run, this would be "503 nested MAIL".
        assert c.cmd("MAIL FROM:<real@remote.test>")[0] == 250
        assert c.cmd("DATA")[0] == 503  # ...and the injected RCPT did not either


def test_declared_size_too_big(fresh):
    fresh.append_config("[smtp]\nmax_message_size = 4096")
    fresh.add_user("big@example.test")
    fresh.start()
    with session(fresh.mx_port) as c:
        code, lines = c.cmd("EHLO client.remote.test")
        assert "SIZE 4096" in lines
        code, text = c.cmd("MAIL FROM:<bob@remote.test> SIZE=5000")
        assert (code, text[0][:5]) == (552, "5.3.4")
        assert c.cmd("MAIL FROM:<bob@remote.test>")[0] == 250
        assert c.cmd("RCPT TO:<big@example.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(MSG + (b"x" * 78 + b"\r\n") * 60 + b".\r\n")
        code, text = c.reply()
        assert (code, text[0][:5]) == (552, "5.3.4")
        # The connection is still usable after the refusal.
        assert c.cmd("NOOP")[0] == 250
    assert fresh.messages("big@example.test") == []


def test_too_many_recipients(fresh):
    fresh.append_config("[smtp]\nmax_recipients = 3")
    for i in range(4):
        fresh.add_user(f"r{i}@example.test")
    fresh.start()
    with session(fresh.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        codes = [c.cmd(f"RCPT TO:<r{i}@example.test>") for i in range(4)]
        assert [code for code, _ in codes] == [250, 250, 250, 452]
        assert codes[3][1][0].startswith("4.5.3")
        assert c.cmd("DATA")[0] == 354
        c.send(MSG + b".\r\n")
        assert c.reply()[0] == 250
    assert [len(fresh.messages(f"r{i}@example.test")) for i in range(4)] == [1, 1, 1, 0]


SMUGGLED = (b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
            b"From: admin@example.test\r\nSubject: smuggled\r\n\r\nsmuggled\r\n")


@pytest.mark.parametrize("ending", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r",
                                    b"\r\n\x00.\r\n"])
def test_smuggling_yields_no_second_message(mx, ending):
    mx.add_user("victim@example.test") if not mx.accounts.get_user("victim@example.test") else None
    before = len(mx.messages("victim@example.test"))
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        assert c.cmd("RCPT TO:<victim@example.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: first\r\n\r\nfirst" + ending + SMUGGLED + b".\r\n")
        code, _ = c.reply()
        assert c.cmd("QUIT")[0] == 221  # no reply of a smuggled command was pending
    stored = mx.messages("victim@example.test")[before:]
    assert not any(b"Subject: smuggled" in m and b"Subject: first" not in m for m in stored)
    if b"\n" in ending.replace(b"\r\n", b"") or b"\r" in ending.replace(b"\r\n", b""):
        assert code == 550 and stored == []  # bare CR/LF: the whole message is refused


def test_bare_cr_refused(mx):
    mx.add_user("cr@example.test")
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        c.cmd("RCPT TO:<cr@example.test>")
        c.cmd("DATA")
        c.send(b"Subject: cr\r\n\r\nline\rmore\r\n.\r\n")
        code, text = c.reply()
    assert (code, text[0][:5]) == (550, "5.6.0")
    assert mx.messages("cr@example.test") == []


def test_overlong_lines(mx):
    mx.add_user("long@example.test")
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        code, _ = c.cmd("NOOP " + "x" * 600)  # RFC 5321 §4.5.3.1.4: 512-octet command lines
        assert code == 500
        c.cmd("MAIL FROM:<bob@remote.test>")
        c.cmd("RCPT TO:<long@example.test>")
        c.cmd("DATA")
        c.send(b"Subject: long\r\n\r\n" + b"y" * 1200 + b"\r\n.\r\n")  # §4.5.3.1.6: 1000
        assert c.reply()[0] == 500
    assert mx.messages("long@example.test") == []


def test_local_part_and_path_limits(mx):
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        code, _ = c.cmd(f"RCPT TO:<{'a' * 65}@example.test>")  # §4.5.3.1.1: 64 octets
        assert code == 553


def test_too_many_errors_closes_with_421(mx):
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        for _ in range(9):
            assert c.cmd("DATA")[0] == 503
        assert c.cmd("RCPT TO:<someone@remote.test>")[0] == 503
        code, text = c.reply()
        assert (code, text[0][:5]) == (421, "4.7.0")
        assert c.closed()


def test_idle_timeout_closes_with_421(fresh):
    fresh.append_config("[smtp]\nidle_timeout = 1")
    fresh.start()
    with session(fresh.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        started = time.monotonic()
        code, text = c.reply()
        assert (code, text[0][:5]) == (421, "4.4.2")
        assert c.closed()
        assert time.monotonic() - started < 5


def test_mail_loop_refused(mx):
    mx.add_user("loop@example.test")
    hops = b"".join(b"Received: from a (b [192.0.2.%d])\r\n\tby c; date\r\n" % (i % 250)
                    for i in range(101))
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        c.cmd("RCPT TO:<loop@example.test>")
        c.cmd("DATA")
        c.send(hops + MSG + b".\r\n")
        code, text = c.reply()
    assert (code, text[0][:5]) == (554, "5.4.6")
    assert mx.messages("loop@example.test") == []


def test_quota(fresh):
    fresh.add_user("full@example.test", quota_bytes=3000)
    fresh.add_user("roomy@example.test")
    fresh.start()
    chunk = b"Subject: q\r\n\r\n" + (b"z" * 98 + b"\r\n") * 10
    assert fresh.send("full@example.test", chunk) == {}
    assert fresh.send("full@example.test", chunk) == {}
    with session(fresh.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        # Declared too big for what is left: refused at RCPT, others unaffected.
        c.cmd("MAIL FROM:<bob@remote.test> SIZE=1100")
        code, text = c.cmd("RCPT TO:<full@example.test>")
        assert (code, text[0][:5]) == (452, "4.2.2")
        assert c.cmd("RCPT TO:<roomy@example.test>")[0] == 250
        c.cmd("RSET")
        # Undeclared, single recipient: refused at the end of DATA.
        c.cmd("MAIL FROM:<bob@remote.test>")
        assert c.cmd("RCPT TO:<full@example.test>")[0] == 250
        c.cmd("DATA")
        c.send(chunk + b".\r\n")
        code, text = c.reply()
        assert (code, text[0][:5]) == (452, "4.2.2")
    assert len(fresh.messages("full@example.test")) == 2
    assert len(fresh.messages("roomy@example.test")) == 0


@pytest.mark.parametrize("broken_dir", ["tmp", "new"])
def test_delivery_failure_is_all_or_nothing(fresh, broken_dir):
    """A failure writing one copy answers 451 and leaves no copy anywhere: with tmp/ broken
    the second copy cannot be written (phase 1); with new/ broken it cannot be renamed into
    place after the first copy already was (phase 2), and that first copy is taken back."""
    ok = fresh.add_user("okay@example.test")
    broken = fresh.add_user("broken@example.test")
    (broken.maildir / broken_dir).rmdir()
    (broken.maildir / broken_dir).write_text("not a directory")
    fresh.start()
    with session(fresh.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        c.cmd("RCPT TO:<okay@example.test>")
        c.cmd("RCPT TO:<broken@example.test>")
        c.cmd("DATA")
        c.send(MSG + b".\r\n")
        code, text = c.reply()
        assert (code, text[0][:5]) == (451, "4.3.0")
        assert c.cmd("NOOP")[0] == 250
    for user in (ok, broken):
        for sub in ("new", "cur", "tmp"):
            path = user.maildir / sub
            assert not path.is_dir() or list(path.iterdir()) == []
    assert "storing the message failed" in fresh.log()


def test_tls_handshake_garbage_does_not_kill_server(mx):
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        assert c.cmd("STARTTLS")[0] == 220
        c.send(b"this is not a TLS client hello\r\n" * 4)
        assert c.closed()
    # The server still serves new connections.
    with session(mx.mx_port) as c:
        assert c.cmd("EHLO client.remote.test")[0] == 250
        assert c.cmd("STARTTLS")[0] == 220
        ctx = mx.tls_context()
        c.starttls(ctx)
        assert c.cmd("NOOP")[0] == 250
        assert isinstance(c.sock, ssl.SSLSocket)


def test_slow_but_steady_data_is_not_cut_off(fresh):
    """The timeout is for silence, not for a large message arriving slowly."""
    fresh.append_config("[smtp]\nidle_timeout = 1")
    fresh.add_user("slow@example.test")
    fresh.start()
    with session(fresh.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        c.cmd("RCPT TO:<slow@example.test>")
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: slow\r\n\r\n")
        for i in range(10):  # 2.5 s in all, never silent for 1 s
            time.sleep(0.25)
            c.send(b"line %d\r\n" % i)
        c.send(b".\r\n")
        assert c.reply()[0] == 250
    assert len(fresh.messages("slow@example.test")) == 1


def test_recipient_limit_does_not_end_the_transaction(fresh):
    """452 for recipients over the limit is not an error to count: the accepted ones get it."""
    fresh.append_config("[smtp]\nmax_recipients = 5\nmax_errors = 3")
    fresh.add_user("many@example.test")
    fresh.start()
    with session(fresh.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        codes = [c.cmd(f"RCPT TO:<many+{i}@example.test>")[0] for i in range(12)]
        assert codes == [250] * 5 + [452] * 7
        assert c.cmd("DATA")[0] == 354
        c.send(MSG + b".\r\n")
        assert c.reply()[0] == 250
    assert len(fresh.messages("many@example.test")) == 1


def test_error_limit_waits_for_the_transaction_to_end(fresh):
    """Unknown recipients count as errors, but a transaction with accepted recipients is
    finished before the connection is closed, so their message is not lost."""
    fresh.append_config("[smtp]\nmax_errors = 3")
    fresh.add_user("kept@example.test")
    fresh.start()
    with session(fresh.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        assert c.cmd("RCPT TO:<kept@example.test>")[0] == 250
        assert [c.cmd(f"RCPT TO:<gone{i}@example.test>")[0] for i in range(5)] == [550] * 5
        assert c.cmd("DATA")[0] == 354
        c.send(MSG + b".\r\n")
        assert c.reply()[0] == 250
        code, text = c.reply()
        assert (code, text[0][:5]) == (421, "4.7.0")
        assert c.closed()
    assert len(fresh.messages("kept@example.test")) == 1


def test_connection_limit(fresh):
    fresh.append_config("[smtp]\nmax_connections = 2")
    fresh.start()
    # start() knocked on the port to see it listening; that connection counts until the
    # server has read its end (a moment: the daemon hands connections on before reading).
    time.sleep(0.5)
    first, second = session(fresh.mx_port), session(fresh.mx_port)
    with RawSMTP(fresh.mx_port) as third:
        code, text = third.reply()
        assert (code, text[0][:5]) == (421, "4.7.0")
        assert third.closed()
    first.close()
    time.sleep(0.2)
    with session(fresh.mx_port) as fourth:  # room again
        assert fourth.cmd("NOOP")[0] == 250
    second.close()


def test_command_line_limit_is_per_connection(mx):
    """aiosmtpd grows a class-wide MAIL length limit per EHLO; ours stays per connection."""
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        with session(mx.mx_port) as other:
            for _ in range(20):
                other.cmd("EHLO other.remote.test")
        long_mail = "MAIL FROM:<" + "a" * 60 + "@" + "b" * 530 + ".test>"
        assert c.cmd(long_mail)[0] == 500


@pytest.mark.parametrize("path", ["<=?utf-8?q?enc?=@example.test>", "<enc(comment)@example.test>",
                                  "<enc @example.test>", "<enc@ example.test>"])
def test_paths_are_smtp_not_rfc5322(mx, path):
    """No comments, folding or encoded words in SMTP paths: each is refused or taken
    literally, never delivered to a mailbox it only decodes to."""
    if mx.accounts.get_user("enc@example.test") is None:
        mx.add_user("enc@example.test")
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        assert c.cmd(f"RCPT TO:{path}")[0] in (550, 553)


def test_malformed_sender_gets_5_1_7(mx):
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        code, text = c.cmd("MAIL FROM:<bob@@remote.test>")
    assert (code, text[0][:5]) == (553, "5.1.7")


def test_starttls_out_of_order(mx):
    with session(mx.mx_port) as c:
        code, text = c.cmd("STARTTLS")  # before EHLO
        assert (code, text[0][:5]) == (503, "5.5.1")
        c.cmd("EHLO client.remote.test")
        assert c.cmd("STARTTLS")[0] == 220
        c.starttls(mx.tls_context())
        c.cmd("EHLO client.remote.test")
        code, text = c.cmd("STARTTLS")  # RFC 3207 §4.2: not twice
        assert (code, text[0][:5]) == (503, "5.5.1")
        assert c.cmd("NOOP")[0] == 250


def test_failed_handshake_is_one_log_line(mx):
    with session(mx.mx_port) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("STARTTLS")
        c.send(b"\x16\x03\x01garbage that is not a client hello\r\n")
        assert c.closed()
    log = mx.wait_for_log("TLS handshake failed")
    assert "Traceback" not in log
