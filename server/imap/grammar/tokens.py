"""IMAP tokens (RFC 3501 §4 and §9): atoms, strings, literals, numbers, flags, dates, names.

Strings come back as ``bytes`` (what the client sent); ``mailbox`` turns a name into Unicode.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import TypeVar

from server.imap import mutf7

Buf = memoryview
T = TypeVar("T")


class ParseError(Exception):
    """A command the parser cannot accept; the session answers ``tag BAD message``.

    ``tag`` is None when the tag itself was unreadable (answer ``* BAD``). ``code`` is a
    response code without brackets to put in the answer: ``TOOBIG`` for a literal over the limit
    (RFC 7888 §4), ``BADCHARSET (US-ASCII UTF-8)`` for a SEARCH charset we lack (RFC 3501
    §6.4.4 wants ``NO`` for that one, not ``BAD``). ``discarding`` is True when the reader
    itself throws away the rest of the command as it arrives (a line over the limit, the data
    of a non-synchronising literal over the limit): nothing needs doing about it, but a
    session may prefer to hang up on a client that sends that much.
    """

    def __init__(self, message: str, tag: str | None = None, *, code: str | None = None,
                 discarding: bool = False):
        super().__init__(message)
        self.message = message
        self.tag = tag
        self.code = code
        self.discarding = discarding

    def __repr__(self) -> str:
        return f"ParseError({self.message!r}, tag={self.tag!r}, code={self.code!r})"


class Incomplete(Exception):
    """Literal data has not arrived yet: only raised when the reader checks a command early,
    at its first synchronising literal, so that a doomed command is refused before the client
    uploads the literal. Deliberately not a ParseError."""


# RFC 3501 §9: ATOM-CHAR is any CHAR except atom-specials: "(" ")" "{" SP CTL "%" "*" DQUOTE
# "\" "]". ASTRING-CHAR adds "]", list-char adds "%" "*" "]"; a tag is ASTRING-CHAR but "+".
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
_ASTRING_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')
_LIST_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\]+')
TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
_DIGITS = re.compile(rb"[0-9]+")
# TEXT-CHAR is any byte but NUL, CR, LF (8-bit allowed as in RFC 9051 for UTF-8); only
# quoted-specials may be escaped.
_QUOTED = re.compile(rb'"((?:[^\x00\r\n"\\]|\\["\\])*)"')
_UNESCAPE = re.compile(rb"\\(.)", re.S)
# {N} synchronising, {N+} non-synchronising (RFC 7888), ~{N} literal8 (RFC 3516). At most 20
# digits: the reader's framing uses the same limit, so both agree on what is a literal.
LITERAL = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\r?\n")

MAX_NUMBER = 2**32 - 1  # RFC 3501 §9: number is an unsigned 32-bit integer
MAX_NUMBER64 = 2**63 - 1  # RFC 7162 §7 / RFC 9051: mod-sequence-value, number64


def found(buf: Buf) -> str:
    """What the parser saw, for error messages."""
    if not buf:
        return "end of line"
    text = repr(bytes(buf[:20]))[2:-1]  # printable as is, the rest as \r, \xff
    return f"'{text}'" + ("..." if len(buf) > 20 else "")


def fail(what: str, buf: Buf) -> ParseError:
    return ParseError(f"expected {what}, found {found(buf)}")


def expect(buf: Buf, token: bytes, what: str) -> Buf:
    if buf[: len(token)] != token:
        raise fail(what, buf)
    return buf[len(token) :]


def sp(buf: Buf, before: str) -> Buf:
    return expect(buf, b" ", f"a space before {before}")


def end(buf: Buf) -> None:
    if buf:
        raise ParseError(f"unexpected {found(buf)} after the arguments")


def peek_digit(buf: Buf) -> bool:
    return bool(buf) and 0x30 <= buf[0] <= 0x39


def atom(buf: Buf, what: str) -> tuple[str, Buf]:
    m = _ATOM.match(buf)
    if not m:
        raise fail(what, buf)
    return m.group().decode("ascii"), buf[m.end() :]


def keyword(buf: Buf) -> tuple[str, Buf]:
    """An atom, upper-cased, or "" (nothing consumed) if there is none: for case-insensitive
    words like command names and search keys."""
    m = _ATOM.match(buf)
    if not m:
        return "", buf
    return m.group().decode("ascii").upper(), buf[m.end() :]


def _number(buf: Buf, what: str, limit: int) -> tuple[int, Buf]:
    m = _DIGITS.match(buf)
    if not m:
        raise fail(what, buf)
    digits = m.group()
    # Checked before int(): a 5,000-digit number must not cost a big-integer conversion.
    significant = digits.lstrip(b"0") or b"0"
    if len(significant) > len(str(limit)) or int(significant) > limit:
        raise ParseError(f"{what} {digits[:24].decode()} is too large (at most {limit})")
    return int(significant), buf[m.end() :]


def number(buf: Buf, what: str) -> tuple[int, Buf]:
    return _number(buf, what, MAX_NUMBER)


def nz_number(buf: Buf, what: str) -> tuple[int, Buf]:
    value, rest = _number(buf, what, MAX_NUMBER)
    if value == 0:
        raise ParseError(f"{what} must not be 0")
    return value, rest


def number64(buf: Buf, what: str, *, zero: bool = True) -> tuple[int, Buf]:
    """RFC 7162 mod-sequence-valzer (``zero``) or mod-sequence-value (non-zero)."""
    value, rest = _number(buf, what, MAX_NUMBER64)
    if value == 0 and not zero:
        raise ParseError(f"{what} must not be 0")
    return value, rest


def _quoted(buf: Buf) -> tuple[bytes, Buf]:
    m = _QUOTED.match(buf)
    if m:
        return _UNESCAPE.sub(rb"\1", m.group(1)), buf[m.end() :]
    # Say why: the client author needs to know which byte broke it.
    i = 1
    while i < len(buf):
        c = buf[i]
        if c == 0x5C:
            if buf[i + 1 : i + 2] not in (b'"', b"\\"):
                raise ParseError('quoted string: only \\\\ and \\" may be escaped')
            i += 2
            continue
        if c in (0, 0x0A, 0x0D):
            raise ParseError("quoted string: NUL, CR and LF are not allowed; use a literal")
        i += 1
    raise ParseError("quoted string not terminated")


def literal(buf: Buf) -> tuple[tuple[bytes, bool], Buf]:
    """A literal: ((data, is_literal8), rest)."""
    m = LITERAL.match(buf)
    if not m:
        raise ParseError("a literal is {size} or {size+} (at most 20 digits), then CRLF")
    size = int(m.group(2))
    rest = buf[m.end() :]
    if len(rest) < size:
        raise Incomplete
    data = bytes(rest[:size])
    binary = bool(m.group(1))
    if not binary and 0 in data:
        # RFC 3501 §9: literal is CHAR8 (no NUL); RFC 3516 literal8 is for binary data.
        raise ParseError("literal contains NUL; binary data needs a literal8 ~{N}")
    return (data, binary), rest[size:]


def string(buf: Buf, what: str) -> tuple[bytes, Buf]:
    first = buf[:1]
    if first == b'"':
        return _quoted(buf)
    if first == b"{" or buf[:2] == b"~{":
        (data, _), rest = literal(buf)
        return data, rest
    raise fail(what + " (a quoted string or a literal)", buf)


def _is_string(buf: Buf) -> bool:
    return buf[:1] in (b'"', b"{") or buf[:2] == b"~{"


def astring(buf: Buf, what: str) -> tuple[bytes, Buf]:
    if _is_string(buf):
        return string(buf, what)
    m = _ASTRING_ATOM.match(buf)
    if not m:
        raise fail(what, buf)
    return m.group(), buf[m.end() :]


# RFC 5322 §3.6.8: field names are printable US-ASCII except ":".
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")


def header_field(buf: Buf) -> tuple[str, Buf]:
    """A header field name (an astring), upper-cased: header names are case-insensitive."""
    raw, rest = astring(buf, "a header field name")
    if not _FIELD_NAME.fullmatch(raw):
        raise ParseError(f"invalid header field name {raw[:40]!r}")
    return raw.decode("ascii").upper(), rest


def nstring(buf: Buf, what: str) -> tuple[bytes | None, Buf]:
    m = _ATOM.match(buf)
    if m and m.group().upper() == b"NIL":
        return None, buf[m.end() :]
    return string(buf, what + " or NIL")


def utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{what} is not valid UTF-8") from None


def mailbox_name(raw: bytes) -> str:
    """RFC 3501 §5.1: INBOX in any case is INBOX; 7-bit names are modified UTF-7 (§5.1.3),
    8-bit ones raw UTF-8 as in IMAP4rev2 (RFC 9051 §5.1)."""
    if raw.upper() == b"INBOX":
        return "INBOX"
    try:
        name = mutf7.decode(raw.decode("ascii")) if raw.isascii() else raw.decode("utf-8")
    except ValueError as err:
        raise ParseError(f"invalid mailbox name encoding: {err}") from None
    # Control characters have no business in a name; they would reach logs and file names.
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in name):
        raise ParseError("mailbox name contains a control character")
    return name


def mailbox(buf: Buf, what: str = "a mailbox name") -> tuple[str, Buf]:
    raw, rest = astring(buf, what)
    return mailbox_name(raw), rest


def list_mailbox(buf: Buf) -> tuple[str, Buf]:
    """RFC 3501 list-mailbox: like a mailbox name, but "%" and "*" may be unquoted."""
    if _is_string(buf):
        raw, rest = string(buf, "a mailbox pattern")
    else:
        m = _LIST_ATOM.match(buf)
        if not m:
            raise fail("a mailbox pattern", buf)
        raw, rest = m.group(), buf[m.end() :]
    return mailbox_name(raw), rest


def plist(buf: Buf, item: Callable[[Buf], tuple[T, Buf]], what: str,
          *, empty: bool = False) -> tuple[tuple[T, ...], Buf]:
    """A parenthesised list of items separated by single spaces."""
    buf = expect(buf, b"(", f"'(' to open {what}")
    if buf[:1] == b")":
        if not empty:
            raise ParseError(f"{what} must not be empty")
        return (), buf[1:]
    items = []
    while True:
        value, buf = item(buf)
        items.append(value)
        if buf[:1] == b")":
            return tuple(items), buf[1:]
        buf = expect(buf, b" ", f"a space or ')' in {what}")


# --- flags (RFC 3501 §2.3.2) ---

SYSTEM_FLAGS = {f.upper(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted",
                                       "\\Draft")}


def flag(buf: Buf) -> tuple[str, Buf]:
    """A flag to store: a system flag in its canonical case, or a keyword as sent."""
    if buf[:1] != b"\\":
        return atom(buf, "a flag")
    if buf[1:2] == b"*":
        raise ParseError("\\* is only meaningful in PERMANENTFLAGS, not as a flag")
    name, rest = atom(buf[1:], "a flag name after '\\'")
    canonical = SYSTEM_FLAGS.get("\\" + name.upper())
    if canonical is None:
        if name.upper() == "RECENT":
            raise ParseError("\\Recent is set by the server and cannot be stored "
                             "(RFC 3501 §2.3.2)")
        # RFC 3501 flag-extension: no extension is defined, and the store could not keep one.
        raise ParseError(f"unknown system flag \\{name}")
    return canonical, rest


def flag_list(buf: Buf) -> tuple[tuple[str, ...], Buf]:
    flags, rest = plist(buf, flag, "the flag list", empty=True)
    return tuple(dict.fromkeys(flags)), rest


# --- dates (RFC 3501 §9: date, date-time) ---

MONTHS = {m: i for i, m in enumerate(
    (b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV",
     b"DEC"), start=1)}
_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
# date-day-fixed is " 7" or "07"; "7" is accepted too, as most servers do.
_DATE_TIME = re.compile(
    rb'"( ?[0-9]|[0-9]{2})-([A-Za-z]{3})-([0-9]{4}) '
    rb'([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"')


def _ymd(day: bytes, month: bytes, year: bytes) -> date:
    mon = MONTHS.get(month.upper())
    if mon is None:
        raise ParseError(f"unknown month {month.decode()!r} (Jan, Feb, ... Dec)")
    try:
        return date(int(year), mon, int(day))
    except ValueError as err:
        raise ParseError(f"invalid date: {err}") from None


def search_date(buf: Buf) -> tuple[date, Buf]:
    """``d-Mon-yyyy``, bare or quoted."""
    quoted = buf[:1] == b'"'
    m = _DATE.match(buf[1:] if quoted else buf)
    if not m:
        raise fail("a date like 1-Feb-2026", buf)
    rest = buf[m.end() + quoted :]
    if quoted:
        rest = expect(rest, b'"', "'\"' after the date")
    return _ymd(*m.group(1, 2, 3)), rest


def date_time(buf: Buf) -> tuple[datetime, Buf]:
    """``"dd-Mon-yyyy hh:mm:ss +zzzz"`` as an aware datetime."""
    m = _DATE_TIME.match(buf)
    if not m:
        raise fail('a date-time like "28-Nov-2026 12:00:00 +0000"', buf)
    day = _ymd(m.group(1).strip(), m.group(2), m.group(3))
    hh, mm, ss, zh, zm = (int(m.group(i)) for i in (4, 5, 6, 8, 9))
    if zh > 23 or zm > 59:
        raise ParseError("invalid time zone offset")
    offset = timedelta(hours=zh, minutes=zm) * (-1 if m.group(7) == b"-" else 1)
    try:
        value = datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=timezone(offset))
    except ValueError as err:
        raise ParseError(f"invalid time: {err}") from None
    return value, buf[m.end() :]
