"""Commands on messages: FETCH, STORE, COPY, MOVE, UID EXPUNGE (and their UID forms).

FETCH items follow RFC 3501 §6.4.5 and RFC 3516 (BINARY); modifiers are RFC 7162's
CHANGEDSINCE, VANISHED and UNCHANGEDSINCE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.imap.grammar import seqset
from server.imap.grammar.seqset import SequenceSet
from server.imap.grammar.tokens import (
    Buf,
    ParseError,
    expect,
    fail,
    flag,
    flag_list,
    header_field,
    keyword,
    mailbox,
    number64,
    nz_number,
    peek_digit,
    plist,
    sp,
)


@dataclass(frozen=True)
class Section:
    """A BODY[...] / BINARY[...] section (RFC 3501 §6.4.5).

    ``part``: part numbers, () for the whole message. ``text``: None (the whole part),
    "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME" (MIME only after a part
    number; BINARY sections are part numbers only). ``fields``: upper-cased header field names
    for HEADER.FIELDS[.NOT].
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetchItem:
    """One FETCH item. ``name`` is one of ENVELOPE FLAGS INTERNALDATE RFC822 RFC822.HEADER
    RFC822.SIZE RFC822.TEXT BODY BODYSTRUCTURE UID MODSEQ BINARY BINARY.SIZE.

    "BODY" with ``section`` None is the non-extensible BODYSTRUCTURE; with a section it is
    BODY[...], ``peek`` True for BODY.PEEK (and BINARY.PEEK): do not set \\Seen. ``partial``
    is (origin, count) from ``<origin.count>``. Macros ALL/FAST/FULL arrive expanded.
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False


@dataclass(frozen=True)
class Fetch:
    """FETCH / UID FETCH. ``changedsince``: RFC 7162 §3.1.4 (the session also returns MODSEQ);
    ``vanished``: §3.2.6, only with UID FETCH and CHANGEDSINCE (checked here)."""

    seqset: SequenceSet
    items: tuple[FetchItem, ...]
    changedsince: int | None = None
    vanished: bool = False


@dataclass(frozen=True)
class Store:
    """STORE / UID STORE. ``mode``: "+" add, "-" remove, "" replace; ``silent`` for
    FLAGS.SILENT; ``flags`` canonical (see ``tokens.flag``); ``unchangedsince``: RFC 7162
    §3.1.3."""

    seqset: SequenceSet
    mode: str
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None


@dataclass(frozen=True)
class CopyMove:
    """COPY and MOVE (RFC 6851), plain or UID."""

    seqset: SequenceSet
    mailbox: str


@dataclass(frozen=True)
class UidExpunge:
    """UID EXPUNGE (RFC 4315 §2.1)."""

    seqset: SequenceSet


_SIMPLE = ("ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
           "RFC822.TEXT", "BODYSTRUCTURE", "UID", "MODSEQ")
# RFC 3501 §6.4.5: the macros.
_FAST = (FetchItem("FLAGS"), FetchItem("INTERNALDATE"), FetchItem("RFC822.SIZE"))
MACROS = {
    "FAST": _FAST,
    "ALL": (*_FAST, FetchItem("ENVELOPE")),
    "FULL": (*_FAST, FetchItem("ENVELOPE"), FetchItem("BODY")),
}
_NAME = re.compile(rb"[A-Za-z0-9.]+")
_TEXT = re.compile(rb"HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME", re.I)
def _part(buf: Buf) -> tuple[tuple[int, ...], Buf]:
    part = []
    while peek_digit(buf):
        n, buf = nz_number(buf, "a part number")
        part.append(n)
        if buf[:1] == b"." and peek_digit(buf[1:]):
            buf = buf[1:]
        else:
            break
    return tuple(part), buf


def _section(buf: Buf, name: str) -> tuple[Section, Buf]:
    """After "[": section-spec "]"."""
    part, buf = _part(buf)
    text = None
    fields: tuple[str, ...] = ()
    want_text = not part and buf[:1] != b"]"
    if part and buf[:1] == b".":
        buf = buf[1:]
        want_text = True
    if want_text:
        m = _TEXT.match(buf)
        if not m:
            raise fail(f"{'' if part else 'a part number, '}HEADER, HEADER.FIELDS, TEXT"
                       f"{', MIME' if part else ''} or ']' in the {name} section", buf)
        text = m.group().decode("ascii").upper()
        buf = buf[m.end() :]
        if text == "MIME" and not part:
            raise ParseError("MIME is only valid after a part number, e.g. BODY[1.MIME]")
        if text.startswith("HEADER.FIELDS"):
            fields, buf = plist(sp(buf, "the header field list"), header_field,
                                "the header field list")
    buf = expect(buf, b"]", f"']' to close the {name} section")
    return Section(part, text, fields), buf


def _partial(buf: Buf) -> tuple[tuple[int, int] | None, Buf]:
    if buf[:1] != b"<":
        return None, buf
    # RFC 9051 partial: "<" number64 "." nz-number64 ">".
    origin, buf = number64(buf[1:], "partial origin")
    count, buf = number64(expect(buf, b".", "'.' and a byte count in <origin.count>"),
                          "partial count", zero=False)
    buf = expect(buf, b">", "'>' to close <origin.count>")
    return (origin, count), buf


def _item(buf: Buf) -> tuple[tuple[FetchItem, ...], Buf]:
    m = _NAME.match(buf)
    if not m:
        raise fail("a FETCH item", buf)
    name = m.group().decode("ascii").upper()
    buf = buf[m.end() :]
    if name in MACROS:
        return MACROS[name], buf
    if name in _SIMPLE:
        return (FetchItem(name),), buf
    if name in ("BODY", "BODY.PEEK"):
        if buf[:1] != b"[":
            if name == "BODY.PEEK":
                raise fail("'[' after BODY.PEEK (a section is required, e.g. BODY.PEEK[])", buf)
            return (FetchItem("BODY"),), buf
        section, buf = _section(buf[1:], "BODY")
        partial, buf = _partial(buf)
        return (FetchItem("BODY", section, partial, name == "BODY.PEEK"),), buf
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        # RFC 3516 §4.2: section-binary = "[" [section-part] "]".
        part, buf = _part(expect(buf, b"[", f"'[' after {name}"))
        buf = expect(buf, b"]", f"']' to close the {name} section (part numbers only)")
        if name == "BINARY.SIZE":
            return (FetchItem(name, Section(part)),), buf
        partial, buf = _partial(buf)
        return (FetchItem("BINARY", Section(part), partial, name == "BINARY.PEEK"),), buf
    raise ParseError(f"unknown FETCH item {name}")


def _fetch_modifiers(buf: Buf, uid: bool) -> tuple[tuple[int | None, bool], Buf]:
    seen: dict[str, int | None] = {}

    def modifier(b: Buf) -> tuple[None, Buf]:
        word, b = keyword(b)
        if word in seen:
            raise ParseError(f"{word} given twice")
        if word == "CHANGEDSINCE":
            # mod-sequence-value is non-zero in RFC 7162; 0 (every message) is harmless.
            seen[word], b = number64(sp(b, "the mod-sequence"), "CHANGEDSINCE mod-sequence")
        elif word == "VANISHED":
            seen[word] = None
        elif word:
            raise ParseError(f"unknown FETCH modifier {word} (CHANGEDSINCE n, VANISHED)")
        else:
            raise fail("a FETCH modifier (CHANGEDSINCE n, VANISHED)", b)
        return None, b

    _, buf = plist(buf, modifier, "the FETCH modifiers")
    vanished = "VANISHED" in seen
    if vanished and not uid:
        raise ParseError("VANISHED is only allowed with UID FETCH (RFC 7162 §3.2.6)")
    if vanished and "CHANGEDSINCE" not in seen:
        raise ParseError("VANISHED needs CHANGEDSINCE (RFC 7162 §3.2.6)")
    return (seen.get("CHANGEDSINCE"), vanished), buf


# What follows the sequence set -> (items, changedsince, vanished, bytes left over).  A client
# sends the same few item lists again and again with other messages (mbsync: one FETCH per
# message), and parsing the list is most of parsing the command.
_FETCH_TAILS: dict[tuple[bytes, bool], tuple] = {}
_FETCH_TAILS_MAX = 512
_TAIL_KEPT = 256  # longer item lists are parsed each time


def parse_fetch(buf: Buf, uid: bool = False) -> tuple[Fetch, Buf]:
    messages, buf = seqset.parse(sp(buf, "the sequence set"))
    key = (bytes(buf), uid) if len(buf) <= _TAIL_KEPT else None
    known = _FETCH_TAILS.get(key) if key is not None else None
    if known is not None:
        items, changedsince, vanished, left = known
        return Fetch(messages, items, changedsince, vanished), buf[len(buf) - left:]
    buf = sp(buf, "the FETCH items")
    if buf[:1] == b"(":
        groups, buf = plist(buf, _item, "the FETCH item list")
        items = tuple(i for group in groups for i in group)
    else:
        items, buf = _item(buf)
    changedsince, vanished = None, False
    if buf[:1] == b" ":
        (changedsince, vanished), buf = _fetch_modifiers(buf[1:], uid)
    items = tuple(dict.fromkeys(items))
    if key is not None:
        if len(_FETCH_TAILS) >= _FETCH_TAILS_MAX:
            _FETCH_TAILS.clear()
        _FETCH_TAILS[key] = (items, changedsince, vanished, len(buf))
    return Fetch(messages, items, changedsince, vanished), buf


def parse_uid_fetch(buf: Buf) -> tuple[Fetch, Buf]:
    return parse_fetch(buf, uid=True)


_STORE_ATT = re.compile(rb"([+-]?)FLAGS(\.SILENT)?", re.I)


def parse_store(buf: Buf) -> tuple[Store, Buf]:
    messages, buf = seqset.parse(sp(buf, "the sequence set"))
    buf = sp(buf, "the flags to store")
    unchangedsince = None
    if buf[:1] == b"(":
        # RFC 7162 §3.1.3: store-modifier "UNCHANGEDSINCE" SP mod-sequence-valzer.
        def modifier(b: Buf) -> tuple[int, Buf]:
            word, rest = keyword(b)
            if word != "UNCHANGEDSINCE":
                raise fail("UNCHANGEDSINCE, the only STORE modifier", b)
            b = rest
            return number64(sp(b, "the mod-sequence"), "UNCHANGEDSINCE mod-sequence")

        values, buf = plist(buf, modifier, "the STORE modifiers")
        if len(values) > 1:
            raise ParseError("UNCHANGEDSINCE given twice")
        unchangedsince = values[0]
        buf = sp(buf, "the flags to store")
    m = _STORE_ATT.match(buf)
    if not m:
        raise fail("FLAGS, +FLAGS or -FLAGS (optionally .SILENT)", buf)
    mode, silent = m.group(1).decode(), bool(m.group(2))
    buf = sp(buf[m.end() :], "the flags")
    if buf[:1] == b"(":
        flags, buf = flag_list(buf)
    else:
        # RFC 3501 store-att-flags also allows flags without parentheses.
        first, buf = flag(buf)
        found = [first]
        while buf[:1] == b" ":
            f, buf = flag(buf[1:])
            found.append(f)
        flags = tuple(dict.fromkeys(found))
    return Store(messages, mode, silent, flags, unchangedsince), buf


def parse_copy_move(buf: Buf) -> tuple[CopyMove, Buf]:
    messages, buf = seqset.parse(sp(buf, "the sequence set"))
    name, buf = mailbox(sp(buf, "the destination mailbox"), "a destination mailbox")
    return CopyMove(messages, name), buf


def parse_uid_expunge(buf: Buf) -> tuple[UidExpunge, Buf]:
    uids, buf = seqset.parse(sp(buf, "the UID set"))
    return UidExpunge(uids), buf
