"""Evaluating SEARCH keys against messages (RFC 3501 §6.4.4, RFC 9051 §6.4.4, RFC 7162 §3.4).

The parser gives a tree of ``SearchKey(name, args)``; the session gives one ``Candidate`` per
message with what the index knows (flags, size, dates, modseq) and a ``load`` that reads the
file. Keys that need no content are decided from the index alone; a message is read only
when a key needs its header or body, at most once per search, and the keys that need no
content are tried first so that ``SEEN BODY x`` reads no seen message.

String matching is a case-insensitive substring match on Unicode text (RFC 9051 §6.4.4:
the i;unicode-casemap comparator of RFC 5051, i.e. case folding and NFKD), against header
values with their RFC 2047 words decoded and against the text parts of the body decoded
from their transfer encoding and charset.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

from server.imap.mime_header import body_offset, field_spans, unfold
from server.imap.mime_parts import parse
from server.imap.mime_text import body_text, decode_words

# Keys whose answer needs the message file; everything else comes from the index.
_HEADER_KEYS = frozenset(("BCC", "CC", "FROM", "SUBJECT", "TO", "HEADER", "SENTBEFORE",
                          "SENTON", "SENTSINCE"))
_CONTENT_KEYS = _HEADER_KEYS | {"BODY", "TEXT"}

# Flag keys: (system flag, whether it must be set). RFC 3501 §2.3.2: flags are matched
# without regard to case.
_FLAG_KEYS = {
    "ANSWERED": ("\\answered", True), "UNANSWERED": ("\\answered", False),
    "DELETED": ("\\deleted", True), "UNDELETED": ("\\deleted", False),
    "DRAFT": ("\\draft", True), "UNDRAFT": ("\\draft", False),
    "FLAGGED": ("\\flagged", True), "UNFLAGGED": ("\\flagged", False),
    "SEEN": ("\\seen", True), "UNSEEN": ("\\seen", False),
}


@dataclass
class Candidate:
    """What the session knows about one message without reading it.

    ``flags`` are the system flags by IMAP name (``\\Seen``), ``keywords`` the others;
    ``load`` reads the message file and is called only when a key needs the content.
    """

    seq: int
    uid: int
    flags: frozenset[str]
    keywords: frozenset[str]
    size: int
    internal_date: dt.datetime
    modseq: int
    recent: bool
    load: Callable[[], bytes] = field(repr=False)
    # Decoded values of header fields known without reading the file (the index keeps
    # what earlier searches found): ``fields.get(name)`` is a list, or None if not known.
    fields: object = field(default=None, repr=False)


def fold(text: str) -> str:
    """RFC 5051 i;unicode-casemap, approximately: case folding, then NFKD."""
    if text.isascii():
        return text.lower()
    return unicodedata.normalize("NFKD", text.casefold())


class _Message:
    """One candidate during one search: its content, read and decoded only on demand."""

    def __init__(self, candidate: Candidate):
        self.c = candidate
        self._decoded: dict[str, list[str]] = {}

    @cached_property
    def flags(self) -> frozenset[str]:
        return frozenset(f.lower() for f in self.c.flags)

    @cached_property
    def keywords(self) -> frozenset[str]:
        return frozenset(k.lower() for k in self.c.keywords) | self.flags

    @cached_property
    def raw(self) -> bytes:
        return self.c.load()

    @cached_property
    def header(self) -> bytes:
        return self.raw[: body_offset(self.raw)]

    @cached_property
    def fields(self) -> dict[str, list[bytes]]:
        """Unfolded raw values of every field, by lower-case name, in order."""
        out: dict[str, list[bytes]] = {}
        for name, start, end in field_spans(self.header):
            out.setdefault(name, []).append(unfold(self.header[start:end]))
        return out

    def known(self, name: str) -> list[str] | None:
        return self.c.fields.get(name) if self.c.fields is not None else None

    def has_field(self, name: str) -> bool:
        known = self.known(name)
        return bool(known) if known is not None else name in self.fields

    def decoded(self, name: str) -> list[str]:
        """The field's values, RFC 2047-decoded and folded."""
        known = self.known(name)
        if known is not None:
            return known
        if name not in self._decoded:
            self._decoded[name] = [fold(decode_words(v)) for v in self.fields.get(name, ())]
        return self._decoded[name]

    @cached_property
    def header_text(self) -> str:
        """The whole header for TEXT: each field unfolded, then decoded."""
        header = self.header
        return fold("\n".join(decode_words(header[start:end].translate(None, b"\r\n"))
                               for _, start, end in field_spans(header)))

    @cached_property
    def body_text(self) -> str:
        # Parts are joined by a line end so that a match never spans two of them.
        return fold("\n".join(body_text(self.raw, parse(self.raw))))

    @cached_property
    def sent_date(self) -> dt.date | None:
        """The Date: field's date as written (time and zone disregarded), None if invalid."""
        values = self.fields.get("date")
        if not values:
            return None
        try:
            parsed = email.utils.parsedate_tz(values[0].decode("latin-1"))
            return dt.date(*parsed[:3]) if parsed else None
        except (ValueError, TypeError, IndexError, OverflowError):
            return None


def _text(arg: bytes | str) -> str:
    # The parser has already decoded the search string from its CHARSET to UTF-8.
    return fold(arg.decode("utf-8", "replace") if isinstance(arg, bytes) else arg)


def needs_content(key) -> bool:
    """True if evaluating ``key`` reads a message's header or body."""
    name = key.name.upper()
    if name in ("AND", "OR", "NOT"):
        return any(needs_content(child) for child in key.args)
    return name in _CONTENT_KEYS


def _cost(key) -> int:
    # 0: index only; 1: the header; 2: the body, which also means a MIME parse and decoding.
    name = key.name.upper()
    if name in ("AND", "OR", "NOT"):
        return max((_cost(child) for child in key.args), default=0)
    return 2 if name in ("BODY", "TEXT") else 1 if name in _HEADER_KEYS else 0


_Test = Callable[[_Message], bool]


def _compile(key, largest_seq: int, largest_uid: int) -> _Test:
    """A test for one message, built once per search: arguments are decoded and folded
    here, not once per message."""
    name = key.name.upper()
    args = key.args
    if name in ("AND", "OR"):
        # Cheapest first: a key the index answers can spare reading the file.
        tests = [_compile(k, largest_seq, largest_uid) for k in sorted(args, key=_cost)]
        if name == "AND":
            return lambda m: all(test(m) for test in tests)
        return lambda m: any(test(m) for test in tests)
    if name == "NOT":
        test = _compile(args[0], largest_seq, largest_uid)
        return lambda m: not test(m)
    if name == "ALL":
        return lambda m: True
    if name in _FLAG_KEYS:
        flag, wanted = _FLAG_KEYS[name]
        return lambda m: (flag in m.flags) == wanted
    if name == "RECENT":
        return lambda m: m.c.recent
    if name == "NEW":
        return lambda m: m.c.recent and "\\seen" not in m.flags  # RFC 3501: RECENT UNSEEN
    if name == "OLD":
        return lambda m: not m.c.recent
    if name in ("KEYWORD", "UNKEYWORD"):
        keyword, wanted = args[0].lower(), name == "KEYWORD"
        return lambda m: (keyword in m.keywords) == wanted
    if name in ("LARGER", "SMALLER", "MODSEQ"):
        n = args[0]
        if name == "LARGER":
            return lambda m: m.c.size > n
        if name == "SMALLER":
            return lambda m: m.c.size < n
        return lambda m: m.c.modseq >= n  # RFC 7162 §3.4: "equal to or greater than"
    if name == "SEQSET":
        return lambda m: args[0].contains(m.c.seq, largest_seq)
    if name == "UID":
        return lambda m: args[0].contains(m.c.uid, largest_uid)
    if name in ("BEFORE", "ON", "SINCE"):
        # RFC 3501 §6.4.4: INTERNALDATE "disregarding time and timezone": its own date.
        compare, wanted = _COMPARE[name], args[0]
        return lambda m: compare(m.c.internal_date.date(), wanted)
    if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        compare, wanted = _COMPARE[name[4:]], args[0]
        return lambda m: m.sent_date is not None and compare(m.sent_date, wanted)
    if name in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
        # Address keys match the field as text, display names included, decoded.
        needle, field_name = _text(args[0]), name.lower()
        return lambda m: any(needle in value for value in m.decoded(field_name))
    if name == "HEADER":
        field_name, needle = args[0].lower(), _text(args[1])
        if not needle:
            return lambda m: m.has_field(field_name)  # RFC 9051 §6.4.4: "" matches the field
        return lambda m: any(needle in value for value in m.decoded(field_name))
    if name == "BODY":
        needle = _text(args[0])
        return lambda m: needle in m.body_text
    if name == "TEXT":
        needle = _text(args[0])
        return lambda m: needle in m.header_text or needle in m.body_text
    raise ValueError(f"unknown search key {key.name!r}")


_COMPARE = {
    "BEFORE": lambda date, wanted: date < wanted,
    "ON": lambda date, wanted: date == wanted,
    "SINCE": lambda date, wanted: date >= wanted,  # "within or later than"
}


def matches(key, c: Candidate, *, largest_seq: int, largest_uid: int) -> bool:
    """Whether ``c`` matches ``key``; ``largest_*`` are what ``*`` means in sets."""
    return _compile(key, largest_seq, largest_uid)(_Message(c))


def search(key, candidates: Iterable[Candidate], *, largest_seq: int, largest_uid: int,
           learned: dict[str, dict[int, list[str]]] | None = None) -> list[Candidate]:
    """The candidates that match ``key``, in the order given; each loaded at most once.

    ``learned`` (if given) collects the decoded header fields read from files on the way,
    by field name and UID, for the caller to keep (``Candidate.fields`` next time).
    """
    test = _compile(key, largest_seq, largest_uid)
    if learned is None:
        return [c for c in candidates if test(_Message(c))]
    found = []
    for c in candidates:
        m = _Message(c)
        if test(m):
            found.append(c)
        for name, values in m._decoded.items():
            learned.setdefault(name, {})[c.uid] = values
    return found


def known_matches(key, every: set[int], field_match, flag_match) -> set[int] | None:
    """The UIDs matching a key made only of header-field and flag keys, by set algebra over
    what the index answers without reading files -- ``field_match(name, needle)``: the UIDs
    whose decoded field contains the (folded) needle, or None if some value is not known;
    ``flag_match(test)``: the UIDs whose lower-case flags and keywords pass ``test``. None
    for any other key (then ``search``): a search of 100,000 messages makes no object or
    call per message."""
    name = key.name.upper()
    args = key.args
    if name in ("AND", "OR", "NOT"):
        parts = []
        for child in args:
            part = known_matches(child, every, field_match, flag_match)
            if part is None:
                return None
            parts.append(part)
        if name == "NOT":
            return every - parts[0]
        if name == "AND":
            return set.intersection(every, *parts)
        return set().union(*parts)
    if name == "ALL":
        return set(every)
    if name in _FLAG_KEYS:
        flag, wanted = _FLAG_KEYS[name]
        return flag_match(lambda flags: (flag in flags) == wanted)
    if name in ("KEYWORD", "UNKEYWORD"):
        keyword, wanted = args[0].lower(), name == "KEYWORD"
        return flag_match(lambda flags: (keyword in flags) == wanted)
    if name in ("FROM", "TO", "CC", "BCC", "SUBJECT", "HEADER"):
        needle = _text(args[-1])
        if not needle:
            return None
        return field_match(name.lower() if name != "HEADER" else args[0].lower(), needle)
    return None


def header_fields(key) -> set[str]:
    """The header fields (lower case) whose decoded values ``key`` compares."""
    name = key.name.upper()
    if name in ("AND", "OR", "NOT"):
        return set().union(*(header_fields(child) for child in key.args))
    if name in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
        return {name.lower()}
    if name == "HEADER":
        return {key.args[0].lower()}
    return set()


_DATE_KEYS = ("BEFORE", "ON", "SINCE")


def needs_info(key) -> bool:
    """True if ``key`` compares size, INTERNALDATE or MODSEQ (the index's message rows)."""
    return _uses(key, ("LARGER", "SMALLER", "MODSEQ", *_DATE_KEYS))


def needs_dates(key) -> bool:
    """True if ``key`` compares INTERNALDATE (which the index may have to read first)."""
    return _uses(key, _DATE_KEYS)


def _uses(key, names: tuple[str, ...]) -> bool:
    name = key.name.upper()
    if name in ("AND", "OR", "NOT"):
        return any(_uses(child, names) for child in key.args)
    return name in names
