"""The ``Authentication-Results`` header field (RFC 8601): building ours, removing forgeries.

One field per message, our host name as authserv-id, one resinfo per result:

    Authentication-Results: mail.example.com;
        spf=pass smtp.mailfrom=sender.example;
        spf=none smtp.helo=mx.sender.example;
        dkim=pass header.d=sender.example header.s=sel1 header.a=rsa-sha256 header.b="AbC/12+x";
        dmarc=pass (p=reject sp=reject pct=100 dis=none) header.from=sender.example;
        arc=none

Why a result is what it is goes in ``reason=`` (RFC 8601 §2.3); DMARC's policy details go in a
comment, as most receivers write them (there are no registered properties for them).

RFC 8601 §5: a field that claims our authserv-id but arrived with the message is a forgery
(mail readers and filters trust it), so every such field is removed before delivery
(``strip_ours``); fields of other ADMDs are left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.inbound import headers

FIELD_NAME = b"Authentication-Results"

# RFC 2045 §5.1 token: a value with none of these (nor space or controls) needs no quotes.
_TSPECIALS = set('()<>@,;:\\"/[]?=')
_MAX_REASON = 200  # keeps every line of the field far below RFC 5322's 998 octets


@dataclass(frozen=True, slots=True)
class Result:
    """One resinfo: ``method=result [(comment)] [reason="..."] [ptype.property=value ...]``."""

    method: str
    result: str
    props: tuple[tuple[str, str], ...] = ()
    reason: str = ""
    comment: str = ""


def _printable(text: str, limit: int) -> str:
    """ASCII without controls: reasons come from libraries and from DNS records."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean if len(clean) <= limit else clean[:limit - 3] + "..."


def quote_value(text: str) -> str:
    """A value as RFC 8601 takes it: a token as is, anything else as a quoted-string."""
    text = _printable(text, _MAX_REASON)
    if text and not any(c in _TSPECIALS or c == " " for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    text = _printable(text, _MAX_REASON)
    return "(" + re.sub(r"([()\\])", r"\\\1", text) + ")"


def resinfo(result: Result) -> str:
    parts = [f"{result.method}={result.result}"]
    if result.comment:
        parts.append(_comment(result.comment))
    if result.reason:
        parts.append(f"reason={quote_value(result.reason)}")
    for name, value in result.props:
        if value:
            parts.append(f"{name}={quote_value(value)}")
    return " ".join(parts)


def build(authserv_id: str, results: list[Result]) -> bytes:
    """The whole field, folded one resinfo per line, ending in CRLF."""
    if not results:
        return FIELD_NAME + f": {authserv_id}; none\r\n".encode("ascii")  # RFC 8601 §2.2
    body = ";\r\n\t".join([authserv_id] + [resinfo(r) for r in results])
    return FIELD_NAME + b": " + body.encode("ascii") + b"\r\n"


# --- reading the authserv-id of a field that arrived with the message ---

def _skip_cfws(text: str, i: int) -> int:
    """Index after white space and (nested) comments starting at ``i`` (RFC 5322 §3.2.2)."""
    depth = 0
    while i < len(text):
        c = text[i]
        if depth:
            if c == "\\":
                i += 1
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
        elif c == "(":
            depth = 1
        elif c not in " \t\r\n":
            break
        i += 1
    return i


def authserv_id(value: bytes) -> str:
    """The authserv-id of an A-R field body, lower-cased and without a trailing dot; "" if
    there is none. It is a token or a quoted-string (RFC 8601 §2.2, §2.5)."""
    text = value.decode("utf-8", "replace")
    i = _skip_cfws(text, 0)
    if text[i:i + 1] == '"':
        out, i = [], i + 1
        while i < len(text) and text[i] != '"':
            if text[i] == "\\":
                i += 1
            out.append(text[i:i + 1])
            i += 1
        ident = "".join(out)
    else:
        match = re.match(r"[^\s;()]*", text[i:])
        ident = match.group(0) if match else ""
    return ident.strip().rstrip(".").lower()


def strip_ours(message: bytes, our_id: str) -> tuple[bytes, int]:
    """``message`` without the A-R fields claiming ``our_id`` (case-insensitively), and how
    many were removed. The message is returned as is (same object) when there were none."""
    fields, rest = headers.split(message)
    ours = our_id.rstrip(".").lower()
    keep = [f for f in fields
            if headers.name_of(f) != b"authentication-results"
            or authserv_id(headers.value_of(f)) != ours]
    removed = len(fields) - len(keep)
    if not removed:
        return message, 0
    return b"".join(keep) + rest, removed
