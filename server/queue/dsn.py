"""Delivery status notifications for the outbound queue: building them, and whether to.

``build_dsn`` returns a complete message with CRLF line ends, ready to queue with
``Spool.add("", [sender], [dsn], is_dsn=True)``: RFC 5321 §6.1 sends a notification with
the null reverse-path, and no notification is ever sent about one (``should_bounce``).

The report is a ``multipart/report; report-type=delivery-status`` (RFC 6522 §3) of three
parts, as RFC 3464 §2 lays out:

1. text/plain for the person: which recipients failed or are delayed, the remote server's
   reply verbatim, and what to do about it;
2. message/delivery-status for programs: per-message fields, then a group per recipient;
3. text/rfc822-headers: the original's header section only.  Returning the body would
   make every bounce a full copy of the message (and of any spam forged with a user's
   address); the headers are enough to recognise it.

Everything except the To: field is 7-bit, so the report passes any relay and any client:
non-ASCII addresses in the machine part use the RFC 6533 §3 utf-8-addr-xtext form
(``\\x{HEX}``), non-ASCII replies there get the same escape, and the human part is UTF-8 in
quoted-printable, where the reply survives verbatim.  A non-ASCII sender can only be
reached over SMTPUTF8 anyway, so its To: field is raw UTF-8 (RFC 6532 §3.2).
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import re
import secrets
import textwrap
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid

from server.queue.spool import QueuedMessage, Recipient

CRLF = b"\r\n"
SUBJECT_FAILED = "Undelivered Mail Returned to Sender"
SUBJECT_DELAYED = "Delayed Mail (still being retried)"

_CODE = re.compile(r"\s*([2-5])\d\d(?=[ -]|$)")
# RFC 3463 §2: class.subject.detail, subject and detail 1-3 digits, after the reply code.
_ENHANCED = re.compile(r"\s*(?:[2-5]\d\d[ -])?([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MAX_LINE = 998  # RFC 5322 §2.1.1
_MAX_WORD = 900  # leaves room for a field name on the same line


def should_bounce(msg: QueuedMessage) -> bool:
    """False for the null sender and for our own reports: never a bounce for a bounce
    (RFC 5321 §6.1), which is what stops two broken servers bouncing to each other forever."""
    return bool(msg.sender) and not msg.is_dsn


def reply_code(rcpt: Recipient) -> int:
    """The SMTP reply code behind ``last_error``; 0 if there was no reply (connection error)."""
    if rcpt.last_code:
        return rcpt.last_code
    match = _CODE.match(rcpt.last_error)
    return int(match[0]) if match else 0


def status_of(rcpt: Recipient) -> str:
    """RFC 3464 §2.3.4 Status: the reply's enhanced code, else one derived from its class.

    An enhanced code whose class disagrees with the reply code's first digit is ignored
    (RFC 3463 §2: they must agree).  No reply at all (connection failure) is 4.0.0.
    """
    code = reply_code(rcpt)
    match = _ENHANCED.match(rcpt.last_error)
    if match and (not code or str(code)[0] == match[1]):
        return ".".join(match.groups())
    return "5.0.0" if 500 <= code <= 599 else "4.0.0"


def _text(value: str) -> str:
    """Printable Unicode with LF line ends: surrogates (undecodable bytes) become U+FFFD."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "replace")
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROLS.sub("", text)


def _ascii(value: str) -> str:
    """One line of ASCII for the machine part; non-ASCII as \\x{HEX} (RFC 6533 §3 notation)."""
    flat = " ".join(_text(value).split())
    return "".join(c if c.isascii() else f"\\x{{{ord(c):02X}}}" for c in flat)


def _typed_address(address: str) -> str:
    """``rfc822; addr``, or ``utf-8; <utf-8-addr-xtext>`` for a non-ASCII address (RFC 6533 §3:
    QCHAR is printable ASCII but "+", "=" and "\\"; everything else is \\x{HEX})."""
    address = _text(address)
    if all("\x21" <= c <= "\x7e" for c in address):
        return f"rfc822; {address}"
    xtext = "".join(
        c if "\x21" <= c <= "\x7e" and c not in "+=\\" else f"\\x{{{ord(c):02X}}}" for c in address
    )
    return f"utf-8; {xtext}"


def _field(name: str, value: str) -> bytes:
    """``Name: value`` folded at spaces near 78 columns (RFC 5322 §2.2.3); a word longer
    than _MAX_WORD is cut so that no line exceeds RFC 5322 §2.1.1's 998 octets."""
    lines, line = [], f"{name}:"
    for word in value.split():
        for piece in (word[i : i + _MAX_WORD] for i in range(0, len(word), _MAX_WORD)):
            if len(line) + 1 + len(piece) > 78 and line.strip() != f"{name}:":
                lines.append(line)
                line = ""
            line += " " + piece
    lines.append(line)
    return "\r\n".join(lines).encode("utf-8") + CRLF


def _date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC))


def header_section(original: bytes) -> bytes:
    """The original's header fields up to the blank line, with CRLF line ends; the whole
    text if there is no blank line (then it is all header)."""
    end = re.search(rb"(?:^|\n)\r?\n", original)
    head = (original[: end.start()] if end else original).rstrip(b"\r\n")
    if not head:
        return b""
    return b"".join(line + CRLF for line in re.split(rb"\r\n|\r|\n", head))


def _original_fields(headers: bytes) -> tuple[str, str]:
    """The original's Subject (decoded) and Message-ID, as far as they can be read."""
    try:
        parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(headers)
        subject = " ".join(_text(str(parsed.get("subject", ""))).split())
        msgid = str(parsed.get("message-id", "")).strip()
    except Exception:  # a malformed header must not stop the report
        return "", ""
    if not re.fullmatch(r"<[\x21-\x3d\x3f-\x7e]{1,900}>", msgid):
        msgid = ""
    return subject, msgid


def _explain(rcpt: Recipient) -> list[str]:
    lines = [f"  <{_text(rcpt.address)}>"]
    reply = _text(rcpt.last_error).strip()
    if reply_code(rcpt):
        server = f"The server {_text(rcpt.remote_mta)}" if rcpt.remote_mta else "The server"
        lines.append(f"    {server} answered:")
    elif reply:
        lines.append("    The recipient's mail server could not be reached:")
    lines += [f"      {line}" for line in reply.splitlines()]
    return [*lines, ""]


def _human_part(reporting_mta, postmaster, subject, failed, delayed, retry_until) -> str:
    def para(text: str) -> list[str]:
        return [*textwrap.wrap(text, 72), ""]

    about = f' "{subject}"' if subject else ""
    lines = para(f"This is the mail system at {reporting_mta}.")
    if failed:
        lines += para(
            f"Your message{about} could not be delivered to the recipients below. The mail "
            "system has given up and will not try again."
        )
        for rcpt in failed:
            lines += _explain(rcpt)
        lines += ["What you can do:"]
        lines += textwrap.wrap(
            "- Check each address for typing mistakes and send the message again.", 72
        )
        lines += textwrap.wrap(
            "- If the reply speaks of a full mailbox, spam or a policy, try again later or "
            "reach the recipient another way.",
            72,
            subsequent_indent="  ",
        )
        lines += textwrap.wrap(
            f"- If you think the fault is ours, forward this report to {postmaster}.",
            72,
            subsequent_indent="  ",
        )
        lines += [""]
    if delayed:
        until = f" until {_date(retry_until)}" if retry_until else ""
        lines += para(
            f"Your message{about} has not been delivered yet to the recipients below. The "
            f"mail system keeps trying{until}; you do not need to send it again."
        )
        for rcpt in delayed:
            lines += _explain(rcpt)
        lines += para("You will hear again only if delivery fails for good.")
    lines += para("The technical report and the headers of your message are attached.")
    return "\n".join(lines)


def _status_part(reporting_mta, arrival, failed, delayed, now, retry_until) -> bytes:
    # RFC 3464 §2.2 per-message fields, then one group per recipient (§2.3), each group
    # preceded by a blank line (§2.1).
    out = [_field("Reporting-MTA", f"dns; {_ascii(reporting_mta)}")]
    out.append(_field("Arrival-Date", _date(arrival)))
    for action, rcpts in (("failed", failed), ("delayed", delayed)):
        for rcpt in rcpts:
            out += [CRLF, _field("Final-Recipient", _typed_address(rcpt.address))]
            out += [_field("Action", action), _field("Status", status_of(rcpt))]
            if rcpt.remote_mta:
                out.append(_field("Remote-MTA", f"dns; {_ascii(rcpt.remote_mta)}"))
            if rcpt.last_error:
                # §2.3.6: "smtp" only for an SMTP reply; a connection error gets a private
                # type, as Postfix's "X-Postfix".
                kind = "smtp" if reply_code(rcpt) else "X-Mailstead"
                out.append(_field("Diagnostic-Code", f"{kind}; {_ascii(rcpt.last_error)}"))
            last = rcpt.last_attempt if rcpt.last_attempt is not None else now
            if rcpt.attempts or rcpt.last_attempt is not None:
                out.append(_field("Last-Attempt-Date", _date(last)))
            if action == "delayed" and retry_until:
                out.append(_field("Will-Retry-Until", _date(retry_until)))
    return b"".join(out)


def _part(content_type: str, encoding: str, body: bytes) -> bytes:
    head = f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n"
    return head.encode("ascii") + body


def _headers_part(headers: bytes) -> bytes:
    lines = headers.split(CRLF)
    if headers.isascii() and all(len(line) <= _MAX_LINE for line in lines):
        return _part("text/rfc822-headers", "7bit", headers)
    # UTF-8 headers (an SMTPUTF8 original, RFC 6532) or overlong lines: base64 keeps the
    # report 7-bit, and RFC 6533 lets text/rfc822-headers say charset=utf-8.
    encoded = base64.encodebytes(headers).replace(b"\n", CRLF)
    return _part("text/rfc822-headers; charset=utf-8", "base64", encoded)


def build_dsn(
    *,
    reporting_mta: str,
    postmaster: str,
    original: bytes,
    sender: str,
    failed: Sequence[Recipient],
    delayed: Sequence[Recipient] = (),
    arrival: float,
    now: float | None = None,
    message_id_domain: str,
    retry_until: float | None = None,
) -> bytes:
    """The DSN to ``sender`` about ``failed`` (Action: failed) and ``delayed`` recipients.

    ``retry_until`` (the expiry time) adds Will-Retry-Until to delayed recipients and tells
    the sender how long we keep trying.
    """
    if not failed and not delayed:
        raise ValueError("a DSN needs at least one failed or delayed recipient")
    if not sender:
        raise ValueError("no DSN to the null reverse-path (RFC 5321 §6.1)")
    now = time.time() if now is None else now
    headers = header_section(original)
    subject, original_id = _original_fields(headers)
    human = _human_part(reporting_mta, postmaster, subject, failed, delayed, retry_until)
    qp = binascii.b2a_qp(human.encode("utf-8"), istext=True).replace(b"\n", CRLF)
    parts = [
        _part("text/plain; charset=utf-8", "quoted-printable", qp),
        _part(
            "message/delivery-status",
            "7bit",
            _status_part(reporting_mta, arrival, failed, delayed, now, retry_until),
        ),
        _headers_part(headers),
    ]
    boundary = f"=_report_{secrets.token_hex(12)}"
    while any(boundary.encode() in part for part in parts):  # cannot happen; cheap to be sure
        boundary = f"=_report_{secrets.token_hex(12)}"
    head = [
        f"From: Mail Delivery System <{_text(postmaster)}>",
        f"To: <{_text(sender)}>",
        f"Subject: {SUBJECT_FAILED if failed else SUBJECT_DELAYED}",
        f"Date: {_date(now)}",
        f"Message-ID: {make_msgid('dsn', domain=message_id_domain)}",
        *([f"References: {original_id}"] if original_id else []),  # threads it in the MUA
        "Auto-Submitted: auto-replied",  # RFC 3834 §5: no vacation reply to this
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f' boundary="{boundary}"',
    ]
    out = ["\r\n".join(head).encode("utf-8"), CRLF, CRLF]
    out.append(b"This is a MIME-encapsulated delivery status report." + CRLF)
    for part in parts:
        # RFC 2046 §5.1.1: the CRLF before a delimiter belongs to the delimiter.
        out += [CRLF, b"--", boundary.encode(), CRLF, part.removesuffix(CRLF)]
    out += [CRLF, b"--", boundary.encode(), b"--", CRLF]
    return b"".join(out)
