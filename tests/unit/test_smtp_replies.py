"""server.smtp.replies: enhanced status codes and the one place exceptions become replies."""

from __future__ import annotations

import asyncio
import logging
import re
from types import SimpleNamespace

import pytest

from server.smtp import replies
from server.smtp.replies import (
    LOCAL_ERROR,
    UNKNOWN_USER,
    Reply,
    SMTPError,
    add_enhanced_code,
    has_enhanced_code,
    smtp_hook,
)

# --- add_enhanced_code ---


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("250 Ok", "250 2.0.0 Ok"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("421 Service not available", "421 4.3.0 Service not available"),
        ("451 Try later", "451 4.3.0 Try later"),
        ("454 TLS not available", "454 4.7.0 TLS not available"),
        ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
        ("502 Command not implemented", "502 5.5.1 Command not implemented"),
        ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
        ("530 Must issue a STARTTLS command", "530 5.7.0 Must issue a STARTTLS command"),
        ("535 Authentication failed", "535 5.7.8 Authentication failed"),
        ("554 Transaction failed", "554 5.7.0 Transaction failed"),
        # codes without a specific entry get the class default
        ("599 Odd", "599 5.0.0 Odd"),
        ("459 Odd", "459 4.0.0 Odd"),
        ("299 Odd", "299 2.0.0 Odd"),
        # no text
        ("250 ", "250 2.0.0"),
    ],
)
def test_adds_code_by_class(line, expected):
    assert add_enhanced_code(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "250 2.1.0 Sender ok",
        "550 5.1.1 No such user here",
        "452 4.5.3 Too many recipients",
        "553 5.1.3",
        "250-2.0.0 first line",
        "550 5.123.456 three-digit detail",
    ],
)
def test_existing_code_left_alone(line):
    assert add_enhanced_code(line) == line


@pytest.mark.parametrize(
    "line",
    [
        "354 End data with <CR><LF>.<CR><LF>",
        "334 VXNlcm5hbWU6",
        "334 ",
        "",
        "Ok",
        "25",
        "250",
        "2500 Ok",
        "25a Ok",
        "abc def",
        "250_Ok",
    ],
)
def test_intermediate_and_non_reply_text_left_alone(line):
    assert add_enhanced_code(line) == line


def test_multi_line_dash_form():
    lines = ["250-First line", "250-Second line", "250 Last line"]
    assert [add_enhanced_code(line) for line in lines] == [
        "250-2.0.0 First line", "250-2.0.0 Second line", "250 2.0.0 Last line"]
    assert add_enhanced_code("550-5.7.1 already") == "550-5.7.1 already"
    assert add_enhanced_code("550-") == "550-5.0.0"


def test_wrong_class_is_not_an_enhanced_code():
    # "3.0.0" is not an RFC 3463 class (2, 4 or 5), so it is text, not a code
    assert add_enhanced_code("550 3.0.0 odd") == "550 5.0.0 3.0.0 odd"
    assert add_enhanced_code("250 2.0 short") == "250 2.0.0 2.0 short"


def test_every_named_reply_has_matching_enhanced_code():
    named = [v for v in vars(replies).values() if isinstance(v, Reply)]
    assert len(named) > 20
    for reply in named:
        assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", reply.enhanced), reply
        assert reply.enhanced[0] == str(reply.code)[0], reply
        assert add_enhanced_code(str(reply)) == str(reply)


def test_smtp_error_text_override():
    err = SMTPError(UNKNOWN_USER, "No mailbox bob here")
    assert str(err.reply) == "550 5.1.1 No mailbox bob here"
    assert str(SMTPError(UNKNOWN_USER).reply) == "550 5.1.1 No such user here"
    assert str(err) == "550 5.1.1 No mailbox bob here"


# --- smtp_hook ---


class Handler:
    def __init__(self, behaviour):
        self.behaviour = behaviour

    @smtp_hook
    async def handle_RCPT(self, server, session, envelope, address, options):
        await asyncio.sleep(0)
        return self.behaviour(address)


def _call(behaviour, session=None, address="bob@example.com"):
    handler = Handler(behaviour)
    session = session or SimpleNamespace(conn_id="c42")
    return asyncio.run(handler.handle_RCPT(None, session, SimpleNamespace(), address, []))


def test_hook_passes_reply_through():
    assert _call(lambda a: f"250 2.1.5 {a} ok") == "250 2.1.5 bob@example.com ok"


def test_hook_turns_smtp_error_into_reply():
    def refuse(address):
        raise SMTPError(UNKNOWN_USER)

    assert _call(refuse) == "550 5.1.1 No such user here"


def test_hook_keeps_smtp_error_text():
    def refuse(address):
        raise SMTPError(replies.MAILBOX_FULL, f"Mailbox of {address} is full")

    assert _call(refuse) == "452 4.2.2 Mailbox of bob@example.com is full"


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("x"), ZeroDivisionError(),
                                 OSError(28, "No space left on device")])
def test_hook_turns_unexpected_exception_into_451(exc, caplog):
    def broken(address):
        raise exc

    with caplog.at_level(logging.ERROR, logger="mailstead.smtp"):
        reply = _call(broken)
    assert reply == "451 4.3.0 Local error in processing, try again later" == str(LOCAL_ERROR)
    records = [r for r in caplog.records if r.name == "mailstead.smtp"]
    assert len(records) == 1
    assert records[0].getMessage() == "conn=c42 handle_RCPT failed"
    assert records[0].exc_info is not None and records[0].exc_info[1] is exc


def test_hook_without_conn_id(caplog):
    def broken(address):
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="mailstead.smtp"):
        assert _call(broken, session=SimpleNamespace()) == str(LOCAL_ERROR)
    assert caplog.records[-1].getMessage() == "conn=- handle_RCPT failed"


def test_hook_lets_cancellation_through():
    # Cancelling a task (shutdown, timeout) must stay a cancellation, not become a reply.
    def cancelled(address):
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        _call(cancelled)


def test_hook_keeps_the_name():
    assert Handler.handle_RCPT.__name__ == "handle_RCPT"
    assert asyncio.iscoroutinefunction(Handler.handle_RCPT)


@pytest.mark.parametrize("status", [
    "250 2.1.0 Sender ok", "550 5.1.1 No such user here", "553 5.1.3", "550 3.0.0 odd",
    "250 Ok", "250-2.0.0 first", "354 End data", "250 2.0.0 a\r\n250 2.0.0 b", "", "25",
    "250 2.0 short", "250 2.0.0x", "550 5.123.456 detail"])
def test_has_enhanced_code_only_where_add_enhanced_code_changes_nothing(status):
    """The protocol skips add_enhanced_code when this says yes: it must never skip a change."""
    if has_enhanced_code(status):
        assert "\r\n" not in status and add_enhanced_code(status) == status
    assert has_enhanced_code(status) == (status in (
        "250 2.1.0 Sender ok", "550 5.1.1 No such user here", "553 5.1.3",
        "550 5.123.456 detail"))
