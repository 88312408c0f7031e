"""Encoding IMAP response data (RFC 3501 §4, §9 formal syntax).

Python values map to IMAP data: ``None`` -> NIL, ``int`` -> number, ``str``/``bytes`` ->
string (quoted when it is short, printable and simple, else a literal), ``list``/``tuple`` ->
parenthesised list, ``Atom`` -> itself, unquoted (flags, keywords, NIL-like tokens we choose),
``Raw`` -> bytes inserted verbatim (pre-encoded parts). Strings are bytes on the wire; ``str``
is encoded as UTF-8.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


class Atom(str):
    """Written as is: a flag (``\\Seen``), a keyword, a capability, a status item name."""


class Raw(bytes):
    """Already-encoded IMAP data, written as is."""


_QUOTABLE_MAX = 1024


# RFC 3501 §9: quoted = DQUOTE *QUOTED-CHAR DQUOTE, no CR/LF/NUL, 7-bit unless UTF-8 is
# enabled (RFC 6855); anything else is sent as a literal.
_UNQUOTABLE = re.compile(rb"[^\x20-\x7e]")


def string(value: str | bytes) -> bytes:
    if type(value) is not bytes:
        value = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(value) <= _QUOTABLE_MAX and _UNQUOTABLE.search(value) is None:
        if b"\\" in value or b'"' in value:
            value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + value + b'"'
    return b"{%d}\r\n" % len(value) + value


def nstring(value: str | bytes | None) -> bytes:
    return b"NIL" if value is None else string(value)


def astring(value: str) -> bytes:
    """A mailbox name or similar: an atom when safe, else a string."""
    data = value.encode("utf-8")
    if data and all(b > 32 and b < 127 and b not in b'(){%*"\\]' for b in data):
        return data
    return string(data)


def encode(value) -> bytes:
    if value is None:
        return b"NIL"
    if isinstance(value, Atom):
        return value.encode("ascii")
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, bool):
        raise TypeError("booleans have no IMAP form")
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, str | bytes):
        return string(value)
    if isinstance(value, list | tuple):
        return b"(" + b" ".join(encode(v) for v in value) + b")"
    raise TypeError(f"cannot encode {type(value).__name__} as IMAP data")


def flag_list(flags: Iterable[str]) -> bytes:
    return b"(" + b" ".join(f.encode("utf-8") for f in flags) + b")"
