"""Trace headers added at delivery: Return-Path, Delivered-To and Received (RFC 5321 §4.4).

Pure functions returning CRLF-terminated bytes, so the MX can write them as the first chunk of
each recipient's copy without touching the message body.
"""

from __future__ import annotations

import email.utils
import re
import time

_UNSAFE = re.compile(r"[^\x21-\x7e]|[()\\;\"<>]")


_date_cache: tuple[int, str] = (-1, "")


def _date(when: float | None) -> str:
    """RFC 5322 date-time of ``when`` (now if None), local time. Every message's Received
    header has one and formatdate is slow (a datetime, a time zone, strftime), so the current
    second's is made once. A tuple is swapped whole: threads may share it."""
    global _date_cache
    if when is not None:
        return email.utils.formatdate(when, localtime=True)
    second = int(time.time())
    cached = _date_cache
    if cached[0] != second:
        cached = _date_cache = (second, email.utils.formatdate(second, localtime=True))
    return cached[1]


def _clean(text: str, limit: int = 255) -> str:
    """A peer-supplied name made safe for a header: it cannot inject lines or break the syntax."""
    return _UNSAFE.sub("?", text)[:limit] or "?"


def protocol_keyword(*, esmtp: bool, tls: bool, auth: bool, utf8: bool) -> str:
    """RFC 3848 / RFC 6531 §4.3 ``with`` keyword: SMTP, ESMTP, ESMTPS, ESMTPSA, UTF8SMTPS..."""
    if not esmtp:
        return "SMTP"
    word = "UTF8SMTP" if utf8 else "ESMTP"
    return word + ("S" if tls else "") + ("A" if auth else "")


def received(*, helo: str, reverse_name: str | None, ip: str, by: str, protocol: str,
             txn_id: str, recipient: str | None, tls_info: str | None = None,
             when: float | None = None) -> bytes:
    ip_text = f"IPv6:{ip}" if ":" in ip else ip
    lines = [f"Received: from {_clean(helo)} ({_clean(reverse_name or 'unknown')} [{ip_text}])"]
    if tls_info:
        lines.append(f"\t({_clean_comment(tls_info)})")
    by_line = f"\tby {by} (mailstead) with {protocol} id {txn_id}"
    if recipient:
        lines.append(by_line)
        lines.append(f"\tfor <{recipient}>; {_date(when)}")
    else:
        lines.append(f"{by_line}; {_date(when)}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def received_by(*, by: str, protocol: str, txn_id: str, recipient: str | None,
                when: float | None = None) -> bytes:
    """A Received header that does not say where the message came from: for mail submitted
    by our own users, whose IP address and machine name are nobody else's business."""
    date = _date(when)
    line = f"Received: by {by} (mailstead) with {protocol} id {txn_id}"
    if recipient:
        line += f"\r\n\tfor <{recipient}>"
    return f"{line}; {date}\r\n".encode("utf-8", "surrogateescape")


def _clean_comment(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]|[()\\]", "?", text)


def return_path(sender: str) -> bytes:
    return f"Return-Path: <{sender}>\r\n".encode("utf-8", "surrogateescape")


def delivered_to(address: str) -> bytes:
    return f"Delivered-To: {address}\r\n".encode("utf-8", "surrogateescape")


def count_received(message: bytes, limit: int) -> int:
    """Received headers in the header section, counting at most ``limit + 1``."""
    if message.startswith(b"\r\n"):
        return 0  # no header section at all
    end = message.find(b"\r\n\r\n")
    header = (message if end < 0 else message[: end + 2]).lower()
    count = 1 if header.startswith(b"received:") else 0
    count += header.count(b"\nreceived:")
    return min(count, limit + 1)


def has_bare_line_end(message: bytes) -> bool:
    """True if a CR or LF appears outside a CRLF pair (RFC 5321 §2.3.8; SMTP smuggling)."""
    crlf = message.count(b"\r\n")
    return message.count(b"\n") != crlf or message.count(b"\r") != crlf
