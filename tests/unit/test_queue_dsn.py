"""server.queue.dsn: RFC 3464 reports that parse, say why, and never bounce a bounce."""

from __future__ import annotations

import email
import email.policy
import re

import pytest

from server.queue.dsn import build_dsn, header_section, should_bounce, status_of
from server.queue.spool import QueuedMessage, Recipient

ORIGINAL = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: Quarterly numbers\r\n"
    b"Message-ID: <abc.123@example.test>\r\n"
    b"\r\n"
    b"SECRET BODY TEXT\r\n"
)
ARRIVAL = 1_700_000_000.0
NOW = ARRIVAL + 3600


def _rcpt(address, reply="", code=0, **kw):
    return Recipient(address, status="failed", attempts=1, last_error=reply, last_code=code, **kw)


def _build(failed=(), delayed=(), original=ORIGINAL, sender="alice@example.test", **kw):
    return build_dsn(
        reporting_mta="mx.example.test",
        postmaster="postmaster@example.test",
        original=original,
        sender=sender,
        failed=list(failed),
        delayed=list(delayed),
        arrival=ARRIVAL,
        now=NOW,
        message_id_domain="example.test",
        **kw,
    )


def _parse(dsn):
    return email.message_from_bytes(dsn, policy=email.policy.default)


def _groups(report):
    """The per-message group and the per-recipient groups of the delivery-status part."""
    status = report.get_payload()[1]
    blocks = status.get_payload()
    return blocks[0], blocks[1:]


FAILED = [
    _rcpt("bob@example.net", "550 5.1.1 <bob@example.net>: user unknown", 550,
          remote_mta="mx1.example.net"),
    _rcpt("carol@example.net", "421 mx1.example.net closing, too busy", 421),
]  # fmt: skip


def test_three_parts_with_the_right_types():
    report = _parse(_build(FAILED))
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    types = [part.get_content_type() for part in report.get_payload()]
    assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert not report.defects


def test_outer_headers():
    dsn = _build(FAILED)
    report = _parse(dsn)
    assert report["From"] == "Mail Delivery System <postmaster@example.test>"
    assert report["To"] == "alice@example.test"
    assert report["Subject"] == "Undelivered Mail Returned to Sender"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["MIME-Version"] == "1.0"
    assert report["Message-ID"].endswith("@example.test>")
    assert report["Date"].datetime.timestamp() == NOW
    assert report["References"] == "<abc.123@example.test>"


def test_per_message_and_per_recipient_fields():
    per_message, groups = _groups(_parse(_build(FAILED)))
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert len(groups) == 2
    bob, carol = groups
    assert bob["Final-Recipient"] == "rfc822; bob@example.net"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.net>: user unknown"
    assert bob["Remote-MTA"] == "dns; mx1.example.net"
    assert bob["Last-Attempt-Date"] == "Tue, 14 Nov 2023 23:13:20 +0000"
    assert carol["Final-Recipient"] == "rfc822; carol@example.net"
    assert carol["Status"] == "4.0.0"
    assert carol["Remote-MTA"] is None


@pytest.mark.parametrize(
    ("reply", "code", "status"),
    [
        ("550 5.1.1 user unknown", 550, "5.1.1"),
        ("550 5.1.1 user unknown", 0, "5.1.1"),  # code read from the reply text
        ("552-5.2.2 mailbox full\n552 5.2.2 really", 552, "5.2.2"),
        ("421 closing", 421, "4.0.0"),
        ("450 4.2.0 greylisted", 450, "4.2.0"),
        ("554 no enhanced code", 554, "5.0.0"),
        ("550 4.2.2 class disagrees with the code", 550, "5.0.0"),
        ("connection refused", 0, "4.0.0"),
        ("", 0, "4.0.0"),
    ],
)
def test_status_of(reply, code, status):
    assert status_of(_rcpt("x@y.test", reply, code)) == status


def test_connection_error_is_not_an_smtp_diagnostic():
    _, (group,) = _groups(_parse(_build([_rcpt("x@y.test", "connect to mx.y.test: refused")])))
    assert group["Diagnostic-Code"] == "X-Mailstead; connect to mx.y.test: refused"
    assert group["Status"] == "4.0.0"


def test_only_the_original_headers_are_returned():
    dsn = _build(FAILED)
    assert b"SECRET BODY TEXT" not in dsn
    headers = _parse(dsn).get_payload()[2].get_content()
    assert "Subject: Quarterly numbers" in headers
    assert header_section(ORIGINAL) == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"


def test_header_section_edge_cases():
    assert header_section(b"A: b\nC: d\n\nbody\n") == b"A: b\r\nC: d\r\n"
    assert header_section(b"A: b\r\n") == b"A: b\r\n"  # no blank line: all header
    assert header_section(b"\r\nbody only\r\n") == b""


def test_crlf_only_and_line_limits():
    long_reply = "550 5.7.1 " + "policy " * 300 + "x" * 2000
    dsn = _build([*FAILED, _rcpt("long@example.net", long_reply, 550)])
    assert b"\n" not in dsn.replace(b"\r\n", b"")
    assert b"\r" not in dsn.replace(b"\r\n", b"")
    assert max(len(line) for line in dsn.split(b"\r\n")) <= 998
    assert dsn.isascii()  # 7-bit: passes any relay
    _, groups = _groups(_parse(dsn))
    assert groups[2]["Status"] == "5.7.1"


def test_human_part_says_who_why_and_what_to_do():
    text = _parse(_build(FAILED)).get_payload()[0].get_content()
    assert "bob@example.net" in text and "carol@example.net" in text
    assert "550 5.1.1 <bob@example.net>: user unknown" in text
    assert "421 mx1.example.net closing, too busy" in text
    assert '"Quarterly numbers"' in text
    assert "will not try again" in text
    assert "postmaster@example.test" in text


def test_non_ascii_reply_and_address_survive():
    reply = "550 5.1.1 Адресат неизвестен — ünknown"
    rcpt = _rcpt("usér@exämple.test", reply, 550)
    dsn = _build([rcpt])
    assert dsn.isascii()
    report = _parse(dsn)
    text = report.get_payload()[0].get_content()
    assert reply in text and "usér@exämple.test" in text
    _, (group,) = _groups(report)
    assert group["Final-Recipient"] == r"utf-8; us\x{E9}r@ex\x{E4}mple.test"
    assert group["Diagnostic-Code"].startswith(r"smtp; 550 5.1.1 \x{410}\x{434}")
    assert group["Status"] == "5.1.1"


def test_surrogates_and_utf8_original_headers_do_not_break_it():
    original = "From: Zoë <zoe@exämple.test>\r\nSubject: Grüße\r\n\r\nbody\r\n".encode()
    rcpt = _rcpt("b@example.net", "550 bad \udcff byte", 550)
    report = _parse(_build([rcpt], original=original))
    headers_part = report.get_payload()[2]
    assert headers_part["Content-Transfer-Encoding"] == "base64"
    assert headers_part.get_content_charset() == "utf-8"
    assert "Subject: Grüße" in headers_part.get_content()
    assert '"Grüße"' in report.get_payload()[0].get_content()


def test_non_ascii_sender_is_raw_utf8_in_to():
    dsn = _build(FAILED, sender="zoë@exämple.test")
    assert "To: <zoë@exämple.test>\r\n".encode() in dsn


def test_delay_warning():
    rcpt = Recipient("bob@example.net", attempts=3, last_error="451 4.7.1 try later",
                     last_code=451, last_attempt=NOW - 60)  # fmt: skip
    report = _parse(_build(delayed=[rcpt], retry_until=ARRIVAL + 5 * 86400))
    assert report["Subject"] == "Delayed Mail (still being retried)"
    _, (group,) = _groups(report)
    assert group["Action"] == "delayed"
    assert group["Status"] == "4.7.1"
    assert group["Last-Attempt-Date"] == "Tue, 14 Nov 2023 23:12:20 +0000"
    assert group["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000"
    text = report.get_payload()[0].get_content()
    assert "do not need to send it again" in text and "19 Nov 2023" in text


def test_failed_and_delayed_in_one_report():
    delayed = Recipient("d@example.org", attempts=1, last_error="421 busy", last_code=421)
    report = _parse(_build(FAILED[:1], delayed=[delayed]))
    assert report["Subject"] == "Undelivered Mail Returned to Sender"
    _, groups = _groups(report)
    assert [g["Action"] for g in groups] == ["failed", "delayed"]


def test_refuses_null_sender_and_empty_report():
    with pytest.raises(ValueError):
        _build(FAILED, sender="")
    with pytest.raises(ValueError):
        _build()


def test_boundary_is_unique_per_report():
    boundaries = {re.search(rb'boundary="([^"]+)"', _build(FAILED))[1] for _ in range(5)}
    assert len(boundaries) == 5


@pytest.mark.parametrize(
    ("sender", "is_dsn", "expected"),
    [("alice@example.test", False, True), ("", False, False), ("alice@example.test", True, False)],
)
def test_should_bounce(sender, is_dsn, expected):
    msg = QueuedMessage(id="0" * 21, sender=sender, recipients=[Recipient("b@x.test")],
                        created=0, next_attempt=0, is_dsn=is_dsn)  # fmt: skip
    assert should_bounce(msg) is expected
