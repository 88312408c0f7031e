"""server.smtp.trace: Received / Return-Path / Delivered-To, bare line ends, hop counting."""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re

import pytest

from server.smtp.trace import (
    count_received,
    delivered_to,
    has_bare_line_end,
    protocol_keyword,
    received,
    return_path,
)

WHEN = 1_700_000_000.0

# RFC 5321 §4.4 Stamp, as we write it:
#   from <helo> (<reverse name> [<ip>])  [(tls info)]  by <host> (mailstead) with <proto> id <id>
#   [for <path>]; <date-time>
_FROM = re.compile(
    r"Received: from (?P<helo>[^\s();]+) \((?P<rev>[^\s();]+) \[(?P<ip>[^\]\s]+)\]\)")
_BY = re.compile(r"\tby (?P<by>\S+) \(mailstead\) with (?P<proto>[A-Z0-9]+) id (?P<id>\S+)")


def _received(**kw) -> bytes:
    args = dict(helo="client.example.org", reverse_name="client.example.org", ip="192.0.2.7",
                by="mx.example.com", protocol="ESMTPS", txn_id="7QkzX2", when=WHEN,
                recipient="alice@example.com")
    args.update(kw)
    return received(**args)


def _lines(header: bytes) -> list[str]:
    assert header.endswith(b"\r\n")
    text = header.decode("utf-8")
    assert not has_bare_line_end(header)
    return text[:-2].split("\r\n")


def _check_structure(header: bytes) -> dict[str, str]:
    """Assert the header is one well-formed Received field; return its parts."""
    lines = _lines(header)
    assert all(line.startswith("\t") for line in lines[1:]), lines  # folded, never a new field
    assert all(len(line.encode()) <= 998 for line in lines)  # RFC 5322 §2.1.1
    m = _FROM.fullmatch(lines[0])
    assert m, lines[0]
    parts = m.groupdict()
    by_line = next(line for line in lines if line.startswith("\tby "))
    m = _BY.fullmatch(by_line.split(";")[0])
    assert m, by_line
    parts.update(m.groupdict())
    unfolded = " ".join(line.strip() for line in lines)
    assert unfolded.count(";") == 1  # only the one before the date
    stamp, date = unfolded.split("; ")
    assert email.utils.parsedate_to_datetime(date).timestamp() == WHEN
    parts["stamp"] = stamp
    # a real parser sees exactly this one field
    msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        header + b"Subject: x\r\n\r\nbody\r\n")
    assert msg.keys() == ["Received", "Subject"]
    return parts


def test_received_shape():
    header = _received()
    lines = _lines(header)
    date = email.utils.formatdate(WHEN, localtime=True)
    assert lines == [
        "Received: from client.example.org (client.example.org [192.0.2.7])",
        "\tby mx.example.com (mailstead) with ESMTPS id 7QkzX2",
        f"\tfor <alice@example.com>; {date}",
    ]
    parts = _check_structure(header)
    assert parts["helo"] == "client.example.org"
    assert parts["ip"] == "192.0.2.7"
    assert parts["proto"] == "ESMTPS"


def test_received_without_recipient():
    header = _received(recipient=None, reverse_name=None, protocol="SMTP")
    lines = _lines(header)
    date = email.utils.formatdate(WHEN, localtime=True)
    assert lines == [
        "Received: from client.example.org (unknown [192.0.2.7])",
        f"\tby mx.example.com (mailstead) with SMTP id 7QkzX2; {date}",
    ]
    assert "for <" not in header.decode()
    _check_structure(header)


def test_received_with_tls_info():
    header = _received(tls_info="version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256")
    lines = _lines(header)
    assert lines[1] == "\t(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256)"
    _check_structure(header)


def test_received_ipv6():
    header = _received(ip="2001:db8::25")
    assert _lines(header)[0] == (
        "Received: from client.example.org (client.example.org [IPv6:2001:db8::25])")
    assert _check_structure(header)["ip"] == "IPv6:2001:db8::25"


@pytest.mark.parametrize(
    "helo",
    [
        "evil\r\nX-Injected: yes",
        "evil\nX-Injected: yes",
        "evil\rX-Injected: yes",
        "evil\r\n\tby fake.example with SMTP",
        "evil (forged.example [203.0.113.9])",
        "evil) by fake.example (x",
        "evil; Thu, 1 Jan 1970 00:00:00 +0000",
        "ÉvilHélo.example",
        "\u2028line\u2029separators\x85",
        'q"uote <angle> back\\slash',
        "",
        " ",
        "x" * 2000,
        "\x00\x1b[31m",
    ],
)
def test_hostile_helo_cannot_break_the_header(helo):
    header = _received(helo=helo)
    header.decode("ascii")  # nothing but ASCII from the peer's text
    parts = _check_structure(header)
    assert parts["rev"] == "client.example.org"
    assert parts["ip"] == "192.0.2.7"
    assert parts["by"] == "mx.example.com"
    assert re.fullmatch(r"[\x21-\x7e]{1,255}", parts["helo"])
    assert not set(parts["helo"]) & set('()\\;"<>')
    assert b"\r\nX-Injected" not in header


@pytest.mark.parametrize("name", ["evil\r\nX-Injected: yes", "a (b) c", "x;y", "é"])
def test_hostile_reverse_name_cannot_break_the_header(name):
    parts = _check_structure(_received(reverse_name=name))
    assert parts["helo"] == "client.example.org"
    assert not set(parts["rev"]) & set('()\\;"<>')


def test_hostile_tls_info_stays_one_comment():
    header = _received(tls_info="x)\r\nX-Injected: (yes\\")
    lines = _lines(header)
    assert lines[1] == "\t(x???X-Injected: ?yes?)"
    _check_structure(header)


@pytest.mark.parametrize(
    ("flags", "keyword"),
    [
        (dict(esmtp=False, tls=False, auth=False, utf8=False), "SMTP"),
        (dict(esmtp=True, tls=False, auth=False, utf8=False), "ESMTP"),
        (dict(esmtp=True, tls=True, auth=False, utf8=False), "ESMTPS"),
        (dict(esmtp=True, tls=False, auth=True, utf8=False), "ESMTPA"),
        (dict(esmtp=True, tls=True, auth=True, utf8=False), "ESMTPSA"),
        (dict(esmtp=True, tls=False, auth=False, utf8=True), "UTF8SMTP"),
        (dict(esmtp=True, tls=True, auth=False, utf8=True), "UTF8SMTPS"),
        (dict(esmtp=True, tls=True, auth=True, utf8=True), "UTF8SMTPSA"),
        (dict(esmtp=True, tls=False, auth=True, utf8=True), "UTF8SMTPA"),
    ],
)
def test_protocol_keyword(flags, keyword):
    # RFC 3848 and RFC 6531 §4.3 registered "with" keywords
    assert protocol_keyword(**flags) == keyword
    assert _check_structure(_received(protocol=keyword))["proto"] == keyword


def test_return_path_and_delivered_to():
    assert return_path("bob@example.org") == b"Return-Path: <bob@example.org>\r\n"
    assert return_path("") == b"Return-Path: <>\r\n"
    assert delivered_to("alice@example.com") == b"Delivered-To: alice@example.com\r\n"
    assert delivered_to("jösé@example.com") == "Delivered-To: jösé@example.com\r\n".encode()


# --- has_bare_line_end ---


@pytest.mark.parametrize(
    ("data", "bare"),
    [
        (b"", False),
        (b"no line end", False),
        (b"a\r\nb\r\n", False),
        (b"a\r\n\r\nbody\r\n.\r\n", False),
        (b"a\nb", True),
        (b"a\rb", True),
        (b"a\r\nb\n", True),
        (b"a\r\r\n", True),
        (b"a\r\n\n", True),
        (b"a\n\r", True),
        (b"\r\n.\n", True),  # the SMTP smuggling end-of-data variants
        (b"\n.\r\n", True),
        (b"\r.\r", True),
        (b"\r", True),
        (b"\n", True),
    ],
)
def test_has_bare_line_end(data, bare):
    assert has_bare_line_end(data) is bare


# --- count_received ---


def test_count_received_case_insensitive():
    msg = (b"Received: from a\r\nreceived: from b\r\nRECEIVED: from c\r\n"
           b"ReCeIvEd:from d\r\nSubject: hi\r\n\r\nbody\r\n")
    assert count_received(msg, 30) == 4


def test_count_received_header_section_only():
    msg = (b"Received: from a\r\nSubject: hi\r\n\r\n"
           b"Received: from quoted\r\nReceived: from quoted\r\n")
    assert count_received(msg, 30) == 1


def test_count_received_ignores_lookalikes():
    msg = (b"X-Received: from a\r\nSubject: Received: twice\r\n"
           b"Comment: folded\r\n Received: from b\r\nReceived-SPF: pass\r\n\r\n")
    assert count_received(msg, 30) == 0


def test_count_received_without_body():
    assert count_received(b"Received: a\r\nReceived: b\r\n", 30) == 2
    assert count_received(b"", 30) == 0


def test_count_received_empty_header_section():
    # A message may have no header fields at all (RFC 5322 §3.5: the CRLF then the body); then
    # nothing is a header, and Received lines quoted in the body are not hops.
    assert count_received(b"\r\nReceived: in the body\r\n", 30) == 0
    assert count_received(b"\r\n" + b"Received: quoted\r\n" * 40, 30) == 0


def test_count_received_capped_at_limit_plus_one():
    msg = b"Received: x\r\n" * 100 + b"\r\nbody\r\n"
    assert count_received(msg, 30) == 31
    assert count_received(msg, 100) == 100
    assert count_received(msg, 99) == 100
    assert count_received(msg, 0) == 1


def test_received_date_now_is_the_current_second(monkeypatch):
    """Without ``when`` the date is now's, made once per second and shared by the headers of
    that second; a new second makes a new one."""
    from server.smtp import trace

    now = [1_700_000_000.25]
    monkeypatch.setattr(trace.time, "time", lambda: now[0])
    first = received(helo="h", reverse_name=None, ip="192.0.2.7", by="mx.example.com",
                     protocol="ESMTP", txn_id="a", recipient="x@example.com")
    assert first.decode().endswith(f"; {email.utils.formatdate(now[0], localtime=True)}\r\n")
    now[0] += 0.5
    assert trace._date(None) == email.utils.formatdate(1_700_000_000, localtime=True)
    now[0] += 1
    assert trace._date(None) == email.utils.formatdate(1_700_000_001, localtime=True)
    assert trace._date(1_600_000_000) == email.utils.formatdate(1_600_000_000, localtime=True)
