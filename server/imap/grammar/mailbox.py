"""Commands on mailboxes: SELECT EXAMINE CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB
STATUS APPEND. Mailbox names are Unicode (``tokens.mailbox_name``), INBOX upper-cased."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from server.imap.grammar import seqset
from server.imap.grammar.seqset import SequenceSet
from server.imap.grammar.tokens import (
    Buf,
    ParseError,
    astring,
    atom,
    date_time,
    expect,
    fail,
    flag_list,
    found,
    keyword,
    list_mailbox,
    literal,
    mailbox,
    number64,
    nz_number,
    plist,
    sp,
)


@dataclass(frozen=True)
class QResync:
    """RFC 7162 §3.2.5 ``QRESYNC (uidvalidity modseq [known-uids] [(seqs uids)])``.

    ``seq_match`` is (known sequence numbers, the UIDs they correspond to). No set holds "*".
    """

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True)
class Select:
    """SELECT and EXAMINE (RFC 3501 §6.3.1-2). ``condstore``: the CONDSTORE parameter was
    given (RFC 7162 §3.1.8); QRESYNC implies CONDSTORE but does not set this flag."""

    mailbox: str
    condstore: bool = False
    qresync: QResync | None = None


@dataclass(frozen=True)
class Create:
    """CREATE (RFC 3501 §6.3.3); ``special_use`` from ``USE (...)`` (RFC 6154 §3), known
    attributes in canonical case ("\\Sent"), others as sent (answer NO [USEATTR])."""

    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mailbox:
    """DELETE, SUBSCRIBE, UNSUBSCRIBE: just a mailbox name."""

    mailbox: str


@dataclass(frozen=True)
class Rename:
    old: str
    new: str


@dataclass(frozen=True)
class List:
    """LIST (RFC 3501 §6.3.8, RFC 5258 LIST-EXTENDED) and LSUB (same class, name "LSUB").

    ``patterns`` are Unicode with ``%``/``*`` wildcards (a pattern equal to "inbox" in any case
    becomes "INBOX"; others must still match INBOX case-insensitively). ``selection``: upper-
    cased selection options (SUBSCRIBED REMOTE RECURSIVEMATCH SPECIAL-USE). ``returns``: RETURN
    options (SUBSCRIBED CHILDREN SPECIAL-USE STATUS); with STATUS, ``status_items`` holds the
    STATUS items to send per mailbox (RFC 5819).
    """

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()


@dataclass(frozen=True)
class Status:
    """STATUS (RFC 3501 §6.3.10): items upper-cased, from ``STATUS_ITEMS``."""

    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class AppendMessage:
    """One message of APPEND. ``flags`` canonical (see ``tokens.flag``), ``date`` the
    internal date (aware) or None for "now"; ``binary`` when sent as literal8 ~{N}
    (RFC 3516 §4.4: the server must then accept binary content-transfer-encoding)."""

    flags: tuple[str, ...]
    date: datetime | None
    data: bytes
    binary: bool = False

    def __repr__(self) -> str:
        return (f"AppendMessage(flags={self.flags!r}, date={self.date!r}, "
                f"data=<{len(self.data)} bytes>, binary={self.binary})")


@dataclass(frozen=True)
class Append:
    """APPEND (RFC 3501 §6.3.11), several messages at once with MULTIAPPEND (RFC 3502)."""

    mailbox: str
    messages: tuple[AppendMessage, ...]


def _no_star(s: SequenceSet, what: str) -> SequenceSet:
    if any(None in r for r in s.ranges):
        raise ParseError(f"'*' is not allowed in {what} (RFC 7162 §3.2.5)")
    return s


def _qresync(buf: Buf) -> tuple[QResync, Buf]:
    buf = expect(buf, b"(", "'(' to open the QRESYNC parameters")
    uidvalidity, buf = nz_number(buf, "UIDVALIDITY")
    # mod-sequence-value is non-zero in RFC 7162, but 0 ("everything") is harmless to accept.
    modseq, buf = number64(sp(buf, "the known mod-sequence"), "mod-sequence")
    known = match = None
    if buf[:1] == b" " and buf[1:2] != b"(":
        known, buf = seqset.parse(buf[1:])
        _no_star(known, "known UIDs")
    if buf[:1] == b" ":
        buf = expect(buf[1:], b"(", "'(' to open the sequence match data")
        seqs, buf = seqset.parse(buf)
        uids, buf = seqset.parse(sp(buf, "the known UID set"))
        buf = expect(buf, b")", "')' to close the sequence match data")
        match = (_no_star(seqs, "known sequence numbers"), _no_star(uids, "known UIDs"))
    buf = expect(buf, b")", "')' to close the QRESYNC parameters")
    return QResync(uidvalidity, modseq, known, match), buf


def parse_select(buf: Buf) -> tuple[Select, Buf]:
    name, buf = mailbox(sp(buf, "the mailbox name"))
    if buf[:1] != b" ":
        return Select(name), buf
    seen: dict[str, QResync | None] = {}

    def param(b: Buf) -> tuple[None, Buf]:
        word, b = keyword(b)
        if word in seen:
            raise ParseError(f"{word} given twice")
        if word == "CONDSTORE":
            seen[word] = None
        elif word == "QRESYNC":
            seen[word], b = _qresync(sp(b, "the QRESYNC parameters"))
        else:
            raise ParseError(f"unknown parameter {word or found(b)} (CONDSTORE, QRESYNC)")
        return None, b

    _, buf = plist(buf[1:], param, "the SELECT parameters")
    return Select(name, "CONDSTORE" in seen, seen.get("QRESYNC")), buf


# RFC 6154 §2 (and RFC 8457 \Important).
SPECIAL_USE = {a.upper(): a for a in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk",
                                      "\\Sent", "\\Trash", "\\Important")}


def _use_attr(buf: Buf) -> tuple[str, Buf]:
    buf = expect(buf, b"\\", "a special-use attribute like \\Sent")
    name, buf = atom(buf, "a special-use attribute name")
    attr = "\\" + name
    return SPECIAL_USE.get(attr.upper(), attr), buf


def parse_create(buf: Buf) -> tuple[Create, Buf]:
    name, buf = mailbox(sp(buf, "the mailbox name"))
    if buf[:1] != b" ":
        return Create(name), buf
    uses: list[str] = []

    def param(b: Buf) -> tuple[None, Buf]:
        word, b = keyword(b)
        if word != "USE":
            raise ParseError(f"unknown CREATE parameter {word or found(b)} (USE)")
        attrs, b = plist(sp(b, "the USE list"), _use_attr, "the USE list")
        uses.extend(attrs)
        return None, b

    _, buf = plist(buf[1:], param, "the CREATE parameters")
    return Create(name, tuple(dict.fromkeys(uses))), buf


def parse_mailbox(buf: Buf) -> tuple[Mailbox, Buf]:
    name, buf = mailbox(sp(buf, "the mailbox name"))
    return Mailbox(name), buf


def parse_quota_root(buf: Buf) -> tuple[Mailbox, Buf]:
    """GETQUOTA's argument (RFC 9208 §4.2): a quota root name, which may be empty."""
    raw, buf = astring(sp(buf, "the quota root"), "the quota root")
    return Mailbox(raw.decode("utf-8", "replace")), buf


def parse_rename(buf: Buf) -> tuple[Rename, Buf]:
    old, buf = mailbox(sp(buf, "the mailbox name"))
    new, buf = mailbox(sp(buf, "the new mailbox name"), "the new mailbox name")
    return Rename(old, new), buf


SELECT_OPTIONS = ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE")
RETURN_OPTIONS = ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS")
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE",
                "HIGHESTMODSEQ")


def _option(allowed: tuple[str, ...], what: str):
    def parse(buf: Buf) -> tuple[str, Buf]:
        word, rest = keyword(buf)
        if word not in allowed:
            # RFC 5258 §3: an unrecognised option is answered BAD.
            raise ParseError(f"unknown {what} {word or found(buf)} "
                             f"({' '.join(allowed)})")
        return word, rest
    return parse


_select_option = _option(SELECT_OPTIONS, "LIST selection option")
_status_item = _option(STATUS_ITEMS, "STATUS item")


def _returns(buf: Buf) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], Buf]:
    status: list[tuple[str, ...]] = []
    plain = _option(RETURN_OPTIONS, "LIST RETURN option")

    def option(b: Buf) -> tuple[str, Buf]:
        word, b = plain(b)
        if word == "STATUS":
            if status:
                raise ParseError("STATUS given twice in RETURN")
            items, b = plist(sp(b, "the STATUS items"), _status_item, "the STATUS items")
            status.append(items)
        return word, b

    opts, buf = plist(buf, option, "the RETURN options", empty=True)
    items = tuple(dict.fromkeys(status[0])) if status else ()
    return (tuple(dict.fromkeys(opts)), items), buf


def parse_list(buf: Buf) -> tuple[List, Buf]:
    buf = sp(buf, "the reference name")
    selection: tuple[str, ...] = ()
    if buf[:1] == b"(":
        selection, buf = plist(buf, _select_option, "the LIST selection options", empty=True)
        selection = tuple(dict.fromkeys(selection))
        if selection == ("RECURSIVEMATCH",):
            raise ParseError("RECURSIVEMATCH needs another selection option (RFC 5258 §3)")
        buf = sp(buf, "the reference name")
    reference, buf = mailbox(buf, "a reference name")
    buf = sp(buf, "the mailbox pattern")
    if buf[:1] == b"(":
        patterns, buf = plist(buf, list_mailbox, "the mailbox patterns")
    else:
        pattern, buf = list_mailbox(buf)
        patterns = (pattern,)
    returns: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()
    if buf[:1] == b" ":
        word, rest = keyword(buf[1:])
        if word != "RETURN":
            raise fail("RETURN (options) after the patterns", buf[1:])
        (returns, status_items), buf = _returns(sp(rest, "the RETURN options"))
    return List(reference, patterns, selection, returns, status_items), buf


def parse_lsub(buf: Buf) -> tuple[List, Buf]:
    reference, buf = mailbox(sp(buf, "the reference name"), "a reference name")
    pattern, buf = list_mailbox(sp(buf, "the mailbox pattern"))
    return List(reference, (pattern,)), buf


def parse_status(buf: Buf) -> tuple[Status, Buf]:
    name, buf = mailbox(sp(buf, "the mailbox name"))
    items, buf = plist(sp(buf, "the STATUS items"), _status_item, "the STATUS items")
    return Status(name, tuple(dict.fromkeys(items))), buf


def parse_append(buf: Buf) -> tuple[Append, Buf]:
    name, buf = mailbox(sp(buf, "the mailbox name"))
    messages = []
    # RFC 3502: append-message repeats, each "SP [flag-list SP] [date-time SP] literal".
    while buf[:1] == b" " or not messages:
        buf = sp(buf, "the message")
        flags: tuple[str, ...] = ()
        when = None
        if buf[:1] == b"(":
            flags, buf = flag_list(buf)
            buf = sp(buf, "the message")
        if buf[:1] == b'"':
            when, buf = date_time(buf)
            buf = sp(buf, "the message")
        if buf[:1] != b"{" and buf[:2] != b"~{":
            raise fail("the message as a literal {size}", buf)
        (data, binary), buf = literal(buf)
        messages.append(AppendMessage(flags, when, data, binary))
    return Append(name, tuple(messages)), buf
