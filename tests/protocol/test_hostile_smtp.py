"""Hostile SMTP clients over real sockets, on the MX (25) and submission (587/465): relay tricks
the older test_mx_relay list does not cover, smuggling through submission and in headers,
STARTTLS injection and AUTH in the clear on 587, overlong lines, NUL bytes, slowloris, and the
recipient limit. Each test says what an attacker sends, byte for byte, and what must not happen.
"""

from __future__ import annotations

import base64
import time

import pytest

from tests.support.instance import PASSWORD, Instance
from tests.support.rawsmtp import RawSMTP

VICTIM = "victim@example.test"
OTHER = "other@example.test"
MSG = b"From: bob@remote.test\r\nSubject: hostile\r\n\r\nbody\r\n"


@pytest.fixture(scope="module")
def inst(tmp_path_factory, dns_server):
    """One instance for the module: short timeouts for the slowloris tests, a small recipient
    limit, and an error limit high enough that a test's refusals do not end its connection."""
    i = Instance(tmp_path_factory.mktemp("hostile-smtp"), dns_server.nameserver,
                 extra_config="[smtp]\nidle_timeout = 1\nmax_recipients = 5\nmax_errors = 50\n")
    for user in (VICTIM, OTHER, "sender@example.test"):
        i.add_user(user)
    i.start()
    yield i
    i.stop()


def session(port: int) -> RawSMTP:
    c = RawSMTP(port)
    assert c.reply()[0] == 220
    return c


def mx_session(inst) -> RawSMTP:
    c = session(inst.mx_port)
    assert c.cmd("EHLO attacker.remote.test")[0] == 250
    return c


def submission(inst, user: str = "sender@example.test") -> RawSMTP:
    """587 after STARTTLS and AUTH PLAIN as ``user``."""
    c = session(inst.submission_port)
    c.cmd("EHLO laptop.example.test")
    assert c.cmd("STARTTLS")[0] == 220
    c.starttls(inst.tls_context())
    c.cmd("EHLO laptop.example.test")
    blob = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    assert c.cmd(f"AUTH PLAIN {blob}")[0] == 235
    return c


def count(inst, user: str = VICTIM) -> int:
    return len(inst.messages(user))


# --- open relay ---

# Never 250: a relay trick either names a domain that is not ours (554 5.7.1) or is not an
# address (5xx). test_mx_relay.py has the classic list; these are the spellings around it.
RELAY = [
    "<victim@remote.test.>",  # trailing dot on a foreign domain
    "<victim@REMOTE.TEST.>",
    "<victim@ex\u0430mple.test>",  # IDN homograph: Cyrillic a in our domain
    "<victim@xn--exmple-4nf.test>",  # ...in its A-label form
    "<victim@example.test.remote.test.>",
    '<"victim@remote.test">',  # quoted local part, no domain of ours at all
    '<"victim\\@remote.test"@example.test>',  # quoted-pair @
    "<victim%remote.test%example.test@example.test>",  # double percent hack
    "<@example.test:victim%remote.test@example.test>",  # source route + percent hack
    "<@[127.0.0.1]:victim@remote.test>",
    "<remote.test!other.test!victim@example.test>",  # UUCP bang path, two hops
    "<victim@[192.0.2.1]>",
    "<victim@[IPv6:2001:db8::1]>",
    "<victim@[example.test]>",  # a literal that is a name
    "<victim@127.0.0.1>",  # dotted quad without brackets
    "<victim@remote.test> NOTIFY=NEVER",
    "<victim@remote.test\x00@example.test>",  # NUL hiding the rest
    "<victim@example.test\x00remote.test>",
]


@pytest.mark.parametrize("rcpt", RELAY, ids=[repr(r) for r in RELAY])
def test_relay_spelling_refused(inst, rcpt):
    with mx_session(inst) as c:
        assert c.cmd("MAIL FROM:<spammer@remote.test> SMTPUTF8")[0] == 250
        code, text = c.cmd(f"RCPT TO:{rcpt}".encode())
        assert code >= 500, (code, text)
        assert c.cmd("DATA")[0] == 503  # no recipient: nothing to send


@pytest.mark.parametrize("rcpt", ["<VICTIM@EXAMPLE.TEST>", "<victim@Example.Test>",
                                  "<victim@example.test.>", "<Victim@EXAMPLE.test.>"])
def test_our_domain_in_any_case_or_with_a_trailing_dot_is_ours(inst, rcpt):
    """The other side of the relay check: our own domain spelt differently still delivers
    here (and only here)."""
    before = count(inst)
    with mx_session(inst) as c:
        c.cmd("MAIL FROM:<bob@remote.test>")
        assert c.cmd(f"RCPT TO:{rcpt}")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(MSG + b".\r\n")
        assert c.reply()[0] == 250
    assert count(inst) == before + 1
    assert inst.spool().list() == []  # nothing went to the outbound queue


@pytest.mark.parametrize("rcpt", ["<victim@\uff45xample.test>", "<victim@example.test\u3002>"])
def test_unicode_spellings_of_our_domain_never_leave(inst, rcpt):
    """Fullwidth letters and the ideographic full stop map to our domain under IDNA (UTS #46):
    such a recipient is ours or refused, and never reaches the outbound queue."""
    with mx_session(inst) as c:
        c.cmd("MAIL FROM:<bob@remote.test> SMTPUTF8")
        code, _ = c.cmd(f"RCPT TO:{rcpt}".encode())
        assert code in (250, 550, 553, 554)
        if code == 250:
            assert c.cmd("DATA")[0] == 354
            c.send(MSG + b".\r\n")
            assert c.reply()[0] == 250
    assert inst.spool().list() == []


@pytest.mark.parametrize("sender", ["<>", "<MAILER-DAEMON@example.test>", "<@remote.test:>"])
def test_null_and_odd_senders_cannot_relay(inst, sender):
    with mx_session(inst) as c:
        code, _ = c.cmd(f"MAIL FROM:{sender}")
        if code != 250:
            assert code >= 500
            return
        assert c.cmd("RCPT TO:<victim@remote.test>")[0] == 554
        assert c.cmd("RCPT TO:<victim%remote.test@example.test>")[0] == 554
        assert c.cmd(f"RCPT TO:<{VICTIM}>")[0] == 250  # bounces to us are still mail


def test_auth_on_the_mx_does_not_open_the_relay(inst):
    """The MX offers no AUTH: a client that tries it (right password or not) is still a
    stranger and may not relay."""
    blob = base64.b64encode(f"\0sender@example.test\0{PASSWORD}".encode()).decode()
    for tls in (False, True):
        with mx_session(inst) as c:
            if tls:
                assert c.cmd("STARTTLS")[0] == 220
                c.starttls(inst.tls_context())
                c.cmd("EHLO attacker.remote.test")
            assert c.cmd(f"AUTH PLAIN {blob}")[0] == 503
            assert c.cmd("MAIL FROM:<sender@example.test>")[0] == 250
            assert c.cmd("RCPT TO:<victim@remote.test>")[0] == 554
    assert inst.spool().list() == []


def test_submission_without_auth_relays_nothing(inst):
    with session(inst.submission_port) as c:
        c.cmd("EHLO laptop.example.test")
        assert c.cmd("STARTTLS")[0] == 220
        c.starttls(inst.tls_context())
        c.cmd("EHLO laptop.example.test")
        code, text = c.cmd("MAIL FROM:<sender@example.test>")
        assert (code, text[0][:5]) == (530, "5.7.0")
        code, text = c.cmd("RCPT TO:<victim@remote.test>")
        assert code in (503, 530)
    assert inst.spool().list() == []


# --- SMTP smuggling ---


SMUGGLED = (b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
            b"From: admin@example.test\r\nSubject: smuggled\r\n\r\nsmuggled\r\n")
# test_mx_limits has the six classic endings on the MX; here: the same over submission (where
# a smuggled message would leave us signed with our DKIM key), and line ends in headers.
ENDINGS = [b"\n.\n", b"\r.\n", b"\n.\r\n", b"\r\n.\r", b"\r\n\x00.\r\n", b"\r\n.\n\r\n",
           b"\r\r\n.\r\r\n"]


@pytest.mark.parametrize("ending", ENDINGS, ids=[repr(e) for e in ENDINGS])
def test_smuggling_through_submission(inst, ending):
    before, queued = count(inst), len(inst.spool().list())
    with submission(inst) as c:
        c.cmd("MAIL FROM:<sender@example.test>")
        assert c.cmd(f"RCPT TO:<{VICTIM}>")[0] == 250
        assert c.cmd("RCPT TO:<someone@remote.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"From: sender@example.test\r\nSubject: first\r\n\r\nfirst" + ending + SMUGGLED
               + b".\r\n")
        code, _ = c.reply()
        assert c.cmd("NOOP")[0] == 250  # no reply of a smuggled command was pending
    stored = inst.messages(VICTIM)[before:]
    assert not any(b"Subject: smuggled" in m and b"Subject: first" not in m for m in stored)
    assert len(stored) <= 1
    if code == 250:
        assert ending == b"\r\n\x00.\r\n"  # no bare CR or LF: one message with a NUL in it
        assert b"Subject: smuggled" in stored[0]
    else:
        assert code == 550 and stored == [] and len(inst.spool().list()) == queued


@pytest.mark.parametrize("header", [b"Subject: a\nBcc: injected@remote.test",
                                    b"Subject: a\rBcc: injected@remote.test",
                                    b"Subject: a\r\n\nX-Injected: 1",
                                    b"Subject: a\n.\r\nMAIL FROM:<x@remote.test>"])
def test_bare_line_ends_in_headers_refused(inst, header):
    before = count(inst)
    with mx_session(inst) as c:
        c.cmd("MAIL FROM:<bob@remote.test>")
        c.cmd(f"RCPT TO:<{VICTIM}>")
        assert c.cmd("DATA")[0] == 354
        c.send(b"From: bob@remote.test\r\n" + header + b"\r\n\r\nbody\r\n.\r\n")
        code, text = c.reply()
        assert (code, text[0][:5]) == (550, "5.6.0")
        assert c.cmd("NOOP")[0] == 250
    assert count(inst) == before


def test_nul_in_headers_and_body_is_one_message(inst):
    """NUL is not a line end: the message is kept whole (IMAP never shows the NUL, see
    test_imap_hostile), never split, never cut at the NUL."""
    before = count(inst)
    with mx_session(inst) as c:
        c.cmd("MAIL FROM:<bob@remote.test>")
        c.cmd(f"RCPT TO:<{VICTIM}>")
        c.cmd("DATA")
        c.send(b"From: bob@remote.test\r\nSubject: nul\x00here\r\n\r\nbefore\x00after\r\n"
               b"\x00.\r\ntail\r\n.\r\n")
        code, _ = c.reply()
    stored = inst.messages(VICTIM)[before:]
    if code == 250:
        assert len(stored) == 1 and stored[0].endswith(b"before\x00after\r\n\x00.\r\ntail\r\n")
    else:
        assert code >= 500 and stored == []


# --- STARTTLS injection and AUTH before TLS on submission ---


def test_starttls_injection_on_submission(inst):
    """AUTH and MAIL pipelined in the clear after STARTTLS must not run inside TLS."""
    blob = base64.b64encode(f"\0sender@example.test\0{PASSWORD}".encode())
    with session(inst.submission_port) as c:
        c.cmd("EHLO laptop.example.test")
        c.send(b"STARTTLS\r\nAUTH PLAIN " + blob + b"\r\nMAIL FROM:<sender@example.test>\r\n")
        assert c.reply()[0] == 220
        c.starttls(inst.tls_context())
        c.cmd("EHLO laptop.example.test")
        code, text = c.cmd("MAIL FROM:<sender@example.test>")
        assert (code, text[0][:5]) == (530, "5.7.0")  # the injected AUTH did not happen


def test_starttls_injection_on_the_mx_with_data(inst):
    """A whole transaction pipelined after STARTTLS, in the clear: no message arrives."""
    before = count(inst)
    with mx_session(inst) as c:
        c.send(b"STARTTLS\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<" + VICTIM.encode() +
               b">\r\nDATA\r\n" + MSG + b".\r\n")
        assert c.reply()[0] == 220
        c.starttls(inst.tls_context())
        assert c.cmd("EHLO attacker.remote.test")[0] == 250
        assert c.cmd("RSET")[0] == 250
    time.sleep(0.2)
    assert count(inst) == before


@pytest.mark.parametrize("auth", ["AUTH PLAIN {blob}", "AUTH LOGIN {user}", "AUTH LOGIN",
                                  "AUTH PLAIN", "AUTH CRAM-MD5"])
def test_auth_before_tls_on_587_is_refused_unchecked(inst, auth):
    user = "sender@example.test"
    blob = base64.b64encode(f"\0{user}\0wrong password".encode()).decode()
    line = auth.format(blob=blob, user=base64.b64encode(user.encode()).decode())
    mark = len(inst.log())
    with session(inst.submission_port) as c:
        c.cmd("EHLO laptop.example.test")
        for _ in range(4):  # were they checked, the third would be slowed (and logged)
            started = time.monotonic()
            code, text = c.cmd(line)
            assert (code, text[0][:5]) == (530, "5.7.0"), (line, code, text)
            assert time.monotonic() - started < 0.5
    assert "auth failed" not in inst.log()[mark:]


# --- overlong lines and NUL bytes in commands ---


@pytest.mark.parametrize("line", [
    b"NOOP " + b"x" * 510,  # 516 octets with CRLF: over RFC 5321 §4.5.3.1.4's 512
    b"MAIL FROM:<" + b"a" * 64 + b"@" + b"b" * 500 + b".test>",
    b"RCPT TO:<" + b"a" * 1000 + b"@example.test>",
    b"EHLO " + b"h" * 2000,
    b"X" * 100_000,
])
def test_overlong_command_lines(inst, line):
    with mx_session(inst) as c:
        c.send(line + b"\r\n")
        code, _ = c.reply()
        assert code == 500
        assert c.cmd("NOOP")[0] == 250  # the connection is in step afterwards


def test_overlong_line_without_end_is_cut_off(inst):
    """A megabyte without CRLF is not buffered forever: refused, and the session carries on
    or ends — either way the server is still there for the next client."""
    with mx_session(inst) as c:
        c.send(b"NOOP " + b"x" * 1024 * 1024)
        c.send(b"\r\nNOOP\r\n")
        try:
            code, _ = c.reply()
            assert code == 500
        except ConnectionError:
            pass
    with mx_session(inst) as c:
        assert c.cmd("NOOP")[0] == 250


@pytest.mark.parametrize("line", [
    b"MAIL FROM:<bob\x00@remote.test>",
    b"MAIL FROM:<bob@remote.test>\x00 SIZE=10",
    b"RCPT TO:<victim\x00@example.test>",
    b"RCPT TO:<victim@example.test>\x00",
    b"RCPT TO:<victim@example.test\x00>",
])
def test_nul_in_commands_accepts_nothing(inst, line):
    with mx_session(inst) as c:
        if line.startswith(b"RCPT"):
            assert c.cmd("MAIL FROM:<bob@remote.test>")[0] == 250
        c.send(line + b"\r\n")
        code, _ = c.reply()
        assert code >= 500, line
        assert c.cmd("NOOP")[0] == 250


def test_nul_in_ehlo_is_not_echoed_into_headers(inst):
    before = count(inst)
    with mx_session(inst) as c:
        code, _ = c.cmd(b"EHLO evil\x00host\r\nX-Injected: yes")
        c.cmd("RSET")
        c.cmd("MAIL FROM:<bob@remote.test>")
        c.cmd(f"RCPT TO:<{VICTIM}>")
        c.cmd("DATA")
        c.send(MSG + b".\r\n")
        c.reply()
    for message in inst.messages(VICTIM)[before:]:
        head = message.split(b"\r\n\r\n", 1)[0]
        assert b"\x00" not in head and b"\nX-Injected" not in head


# --- slowloris and the recipient limit ---


@pytest.mark.parametrize("service", ["mx", "submission", "submissions"])
def test_slowloris_is_closed(inst, service):
    """One byte every 1.5 s against [smtp] idle_timeout = 1: closed with 421 4.4.2 long before
    the command is complete."""
    c = RawSMTP(inst.ports[service])
    if service == "submissions":
        c.starttls(inst.tls_context())
    with c:
        assert c.reply()[0] == 220
        started = time.monotonic()
        sent = 0
        with pytest.raises(OSError):  # the server hung up: the trickle cannot go on
            for byte in b"EHLO slow.remote.test\r\n":
                c.send(bytes([byte]))
                sent += 1
                time.sleep(1.5)
        assert sent <= 3 and time.monotonic() - started < 6
        try:
            code, text = c.reply()
        except ConnectionError:
            return  # our late byte made the kernel reset the connection before the 421 was read
        assert (code, text[0][:5]) == (421, "4.4.2")


def test_too_many_recipients_then_the_transaction_works(inst):
    """[smtp] max_recipients = 5: the sixth and later get 452 4.5.3, the five get the mail."""
    rcpts = [f"victim+{i}@example.test" for i in range(8)]
    before = count(inst)
    with mx_session(inst) as c:
        c.cmd("MAIL FROM:<bob@remote.test>")
        replies = [c.cmd(f"RCPT TO:<{r}>") for r in rcpts]
        assert [code for code, _ in replies] == [250] * 5 + [452] * 3
        assert all(text[0].startswith("4.5.3") for _, text in replies[5:])
        assert c.cmd("DATA")[0] == 354
        c.send(MSG + b".\r\n")
        assert c.reply()[0] == 250
        # ...and the next transaction on the same connection starts from zero.
        c.cmd("MAIL FROM:<bob@remote.test>")
        assert c.cmd(f"RCPT TO:<{OTHER}>")[0] == 250
    assert count(inst) == before + 1  # one copy per mailbox, however many +tags


def test_too_many_recipients_on_submission(inst):
    with submission(inst) as c:
        c.cmd("MAIL FROM:<sender@example.test>")
        codes = [c.cmd(f"RCPT TO:<r{i}@remote.test>")[0] for i in range(7)]
        assert codes == [250] * 5 + [452] * 2
        assert c.cmd("RSET")[0] == 250
