"""Header-section surgery on raw CRLF messages, without re-serialising what we do not touch.

The body and every header we keep stay byte-for-byte as the client sent them (a re-encoding
parser would change them and break nothing but DKIM and trust).
"""

from __future__ import annotations

import email.utils
import secrets
from email.header import decode_header, make_header


def split(message: bytes) -> tuple[bytes, bytes]:
    """``(header_section, rest)``: the header section ends with the CRLF of its last field;
    ``rest`` starts with the blank line (or is empty when the message has no body)."""
    if message.startswith(b"\r\n"):
        return b"", message
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[: end + 2], message[end + 2 :]


def fields(header: bytes) -> list[tuple[str, bytes]]:
    """``[(lower-case name, raw field including continuation lines)]``, in order."""
    out: list[tuple[str, bytes]] = []
    for line in header.split(b"\r\n")[:-1] if header.endswith(b"\r\n") else header.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and out:
            name, raw = out[-1]
            out[-1] = (name, raw + line + b"\r\n")
        else:
            name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
            out.append((name, line + b"\r\n"))
    return out


def values(header: bytes, name: str) -> list[str]:
    """Unfolded values of every field called ``name``."""
    out = []
    for field_name, raw in fields(header):
        if field_name == name:
            value = raw.split(b":", 1)[1] if b":" in raw else b""
            out.append(value.decode("utf-8", "surrogateescape").replace("\r\n", "").strip())
    return out


def addresses(header: bytes, name: str) -> list[str]:
    """The addr-specs in every ``name`` field (display names and encoded words dropped)."""
    found = []
    for value in values(header, name):
        for _, addr in email.utils.getaddresses([value]):
            if addr:
                found.append(addr)
    return found


def display(value: str) -> str:
    """An RFC 2047-decoded value for logs and messages."""
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # a malformed encoded word is shown as sent
        return value


def fix_submission(message: bytes, hostname: str, now: float | None = None) -> bytes:
    """What RFC 6409 §8 lets a submission server fix: add a missing Date and Message-ID, and
    drop Bcc fields, which must never reach the recipients (RFC 5322 §3.6.3)."""
    header, rest = split(message)
    kept = [raw for name, raw in fields(header) if name != "bcc"]
    names = {name for name, _ in fields(header)}
    if "date" not in names:
        kept.append(f"Date: {email.utils.formatdate(now, localtime=True)}\r\n".encode())
    if "message-id" not in names:
        kept.append(f"Message-ID: <{secrets.token_hex(12)}@{hostname}>\r\n".encode())
    if not rest:
        rest = b"\r\n"
    return b"".join(kept) + rest
