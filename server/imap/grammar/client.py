"""Commands about the client itself: LOGIN, AUTHENTICATE, ENABLE, ID."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from server.imap.grammar.tokens import (
    Buf,
    ParseError,
    astring,
    atom,
    fail,
    nstring,
    plist,
    sp,
    string,
    utf8,
)


@dataclass(frozen=True)
class Login:
    """LOGIN (RFC 3501 §6.2.3). Both are decoded as UTF-8; never log ``password``."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"Login(user={self.user!r}, password=<hidden>)"


@dataclass(frozen=True)
class Authenticate:
    """AUTHENTICATE (RFC 3501 §6.2.2). ``mechanism`` upper-cased ("PLAIN"); ``initial`` the
    decoded SASL-IR initial response (RFC 4959): None when absent (send "+ " and read it with
    ``CommandReader.read_line``), b"" when the client sent "=" (empty response)."""

    mechanism: str
    initial: bytes | None

    def __repr__(self) -> str:
        shown = None if self.initial is None else f"<{len(self.initial)} bytes>"
        return f"Authenticate(mechanism={self.mechanism!r}, initial={shown})"


@dataclass(frozen=True)
class Enable:
    """ENABLE (RFC 5161): capability names upper-cased ("CONDSTORE", "UTF8=ACCEPT")."""

    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Id:
    """ID (RFC 2971): field -> value (None for NIL); ``params`` None for ``ID NIL``.

    Informational only, so text is decoded leniently (invalid UTF-8 is replaced, not refused).
    """

    params: dict[str, str | None] | None

    def __hash__(self) -> int:  # dict is unhashable; the frozen dataclass would try
        return hash(None if self.params is None else tuple(self.params.items()))


def parse_login(buf: Buf) -> tuple[Login, Buf]:
    user, buf = astring(sp(buf, "the user name"), "a user name")
    password, buf = astring(sp(buf, "the password"), "a password")
    return Login(utf8(user, "user name"), utf8(password, "password")), buf


# RFC 4959: initial-response = base64 / "=".
_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}|=")


def parse_authenticate(buf: Buf) -> tuple[Authenticate, Buf]:
    mechanism, buf = atom(sp(buf, "the SASL mechanism"), "a SASL mechanism name")
    if buf[:1] != b" ":
        return Authenticate(mechanism.upper(), None), buf
    m = _BASE64.match(buf[1:])
    if not m:
        raise fail("a base64 initial response or '='", buf[1:])
    text = m.group()
    if text == b"=":
        return Authenticate(mechanism.upper(), b""), buf[1 + m.end() :]
    try:
        initial = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ParseError("initial response is not valid base64 (RFC 4959)") from None
    return Authenticate(mechanism.upper(), initial), buf[1 + m.end() :]


def parse_enable(buf: Buf) -> tuple[Enable, Buf]:
    caps = []
    while True:
        name, buf = atom(sp(buf, "a capability name"), "a capability name")
        caps.append(name.upper())
        if buf[:1] != b" ":
            return Enable(tuple(dict.fromkeys(caps))), buf


# RFC 2971 §3.3: at most 30 pairs, fields of 30 octets, values of 1024 octets.
ID_MAX_PAIRS = 30
ID_MAX_FIELD = 30
ID_MAX_VALUE = 1024


def _id_pair(buf: Buf) -> tuple[tuple[str, str | None], Buf]:
    field, buf = string(buf, "an ID field name")
    value, buf = nstring(sp(buf, "the ID field value"), "an ID field value")
    if len(field) > ID_MAX_FIELD or (value is not None and len(value) > ID_MAX_VALUE):
        raise ParseError(f"ID fields are at most {ID_MAX_FIELD} octets and values "
                         f"{ID_MAX_VALUE} (RFC 2971 §3.3)")
    text = None if value is None else value.decode("utf-8", "replace")
    return (field.decode("utf-8", "replace"), text), buf


def parse_id(buf: Buf) -> tuple[Id, Buf]:
    buf = sp(buf, "the ID parameter list or NIL")
    if buf[:3].tobytes().upper() == b"NIL":
        return Id(None), buf[3:]
    if buf[:1] != b"(":
        raise fail("'(' or NIL", buf)
    # Some clients send "ID ()"; the grammar wants at least one pair, but nothing is lost by
    # taking it as no parameters.
    if buf[:2] == b"()":
        return Id({}), buf[2:]
    pairs = []

    def pair(b: Buf) -> tuple[tuple[str, str | None], Buf]:
        if len(pairs) >= ID_MAX_PAIRS:
            raise ParseError(f"at most {ID_MAX_PAIRS} ID field-value pairs (RFC 2971 §3.3)")
        item, rest = _id_pair(b)
        pairs.append(item)
        return item, rest

    _, buf = plist(buf, pair, "the ID parameter list")
    return Id(dict(pairs)), buf
