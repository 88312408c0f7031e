"""SEARCH (RFC 3501 §6.4.4) with CHARSET, ESEARCH RETURN options (RFC 4731) and MODSEQ
(RFC 7162 §3.1.5).

The criteria are a tree of ``SearchKey(name, args)``; names are upper-case:

- ``AND``: args are child keys. The top level is always an AND of the keys given (even one),
  and so is every parenthesised list: ``(SEEN FROM x)``.
- ``OR``: two child keys. ``NOT``: one child key.
- ``SEQSET``: (SequenceSet,) for a bare sequence set (``1:5``); ``UID``: (SequenceSet,).
- ``BCC BODY CC FROM SUBJECT TEXT TO``: (bytes,), the text to look for, UTF-8 (US-ASCII text
  is a subset), already checked against the CHARSET.
- ``HEADER``: (field: str upper-cased, value: bytes); an empty value means "has the field".
- ``BEFORE ON SINCE SENTBEFORE SENTON SENTSINCE``: (datetime.date,).
- ``LARGER SMALLER``: (int,). ``KEYWORD UNKEYWORD``: (str,). ``MODSEQ``: (int,); the optional
  entry name and type are checked and dropped (we keep no per-flag mod-sequences).
- ``ALL ANSWERED DELETED DRAFT FLAGGED NEW OLD RECENT SEEN UNANSWERED UNDELETED UNDRAFT
  UNFLAGGED UNSEEN``: no args.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.imap.grammar import seqset
from server.imap.grammar.tokens import (
    Buf,
    ParseError,
    astring,
    atom,
    fail,
    header_field,
    keyword,
    number,
    number64,
    plist,
    search_date,
    sp,
    string,
)


@dataclass(frozen=True)
class SearchKey:
    name: str
    args: tuple = ()


@dataclass(frozen=True)
class Search:
    """SEARCH / UID SEARCH. ``charset``: upper-cased CHARSET or None. ``key``: the AND of the
    criteria. ``returns``: None for a plain SEARCH (answer ``* SEARCH``); otherwise ESEARCH
    (RFC 4731) with options from MIN MAX ALL COUNT, where () (``RETURN ()``) means ALL."""

    charset: str | None
    key: SearchKey
    returns: tuple[str, ...] | None = None


FLAG_KEYS = frozenset(("ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD",
                       "RECENT", "SEEN", "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED",
                       "UNSEEN"))
STRING_KEYS = frozenset(("BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"))
DATE_KEYS = frozenset(("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"))
CHARSETS = ("US-ASCII", "UTF-8")
BADCHARSET = "BADCHARSET (US-ASCII UTF-8)"  # RFC 3501 §7.1: the charsets we do support
RETURN_OPTIONS = ("MIN", "MAX", "ALL", "COUNT")
# Nesting costs a Python stack frame per level; no real client nests more than a handful, and
# a hostile "((((..." must end in a BAD, not a RecursionError.
MAX_DEPTH = 50
_WITH_ARGS = STRING_KEYS | DATE_KEYS | {"LARGER", "SMALLER", "KEYWORD", "UNKEYWORD", "HEADER",
                                        "UID", "NOT", "OR", "MODSEQ"}
# RFC 7162 §3.1.5: entry-type-req.
_ENTRY_TYPES = frozenset(("PRIV", "SHARED", "ALL"))


def _text(data: bytes, charset: str | None) -> bytes:
    if charset == "US-ASCII":
        if not data.isascii():
            raise ParseError("8-bit search text with CHARSET US-ASCII; use CHARSET UTF-8")
        return data
    # UTF-8, and no CHARSET: IMAP4rev2 clients send UTF-8 (RFC 9051 §6.4.4).
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("search text is not valid UTF-8") from None
    return data


class _Parser:
    """Holds what every key needs (the charset) so the recursive functions stay small."""

    def __init__(self, charset: str | None):
        self.charset = charset

    def key(self, buf: Buf, depth: int) -> tuple[SearchKey, Buf]:
        if depth > MAX_DEPTH:
            raise ParseError(f"search criteria nested more than {MAX_DEPTH} levels deep")
        if buf[:1] == b"(":
            keys, buf = plist(buf, lambda b: self.key(b, depth + 1), "the search key list")
            return SearchKey("AND", keys), buf
        if buf[:1] in (b"*", b"$") or (buf and 0x30 <= buf[0] <= 0x39):
            s, buf = seqset.parse(buf)
            return SearchKey("SEQSET", (s,)), buf
        name, rest = keyword(buf)
        if not name:
            raise fail("a search key", buf)
        if name in FLAG_KEYS:
            return SearchKey(name), rest
        if name not in _WITH_ARGS:
            raise ParseError(f"unknown search key {name[:30]}")
        rest = sp(rest, f"the {name} argument")
        if name in STRING_KEYS:
            data, rest = astring(rest, f"the {name} text")
            return SearchKey(name, (_text(data, self.charset),)), rest
        if name in DATE_KEYS:
            day, rest = search_date(rest)
            return SearchKey(name, (day,)), rest
        if name in ("LARGER", "SMALLER"):
            size, rest = number(rest, f"{name} size")
            return SearchKey(name, (size,)), rest
        if name in ("KEYWORD", "UNKEYWORD"):
            word, rest = atom(rest, f"a keyword after {name}")
            return SearchKey(name, (word,)), rest
        if name == "HEADER":
            field, rest = header_field(rest)
            value, rest = astring(sp(rest, "the header value"), "the header value")
            return SearchKey(name, (field, _text(value, self.charset))), rest
        if name == "UID":
            uids, rest = seqset.parse(rest)
            return SearchKey(name, (uids,)), rest
        if name == "NOT":
            child, rest = self.key(rest, depth + 1)
            return SearchKey(name, (child,)), rest
        if name == "OR":
            left, rest = self.key(rest, depth + 1)
            right, rest = self.key(sp(rest, "the second OR key"), depth + 1)
            return SearchKey(name, (left, right)), rest
        return self.modseq(rest)  # the last of _WITH_ARGS

    def modseq(self, buf: Buf) -> tuple[SearchKey, Buf]:
        # RFC 7162 §3.1.5: MODSEQ [entry-name SP entry-type-req SP] mod-sequence-valzer, where
        # entry-name is a quoted "/flags/<flag>".
        if buf[:1] == b'"':
            entry, buf = string(buf, "a MODSEQ entry name")
            if not entry.lower().startswith(b"/flags/"):
                raise ParseError('MODSEQ entry name must be "/flags/<flag>"')
            kind, buf = keyword(sp(buf, "the MODSEQ entry type"))
            if kind not in _ENTRY_TYPES:
                raise ParseError("MODSEQ entry type must be priv, shared or all")
            buf = sp(buf, "the mod-sequence")
        value, buf = number64(buf, "MODSEQ mod-sequence")
        return SearchKey("MODSEQ", (value,)), buf


def _return_option(buf: Buf) -> tuple[str, Buf]:
    word, rest = keyword(buf)
    if word == "SAVE":
        raise ParseError("RETURN (SAVE) needs SEARCHRES (RFC 5182), which is not supported")
    if word not in RETURN_OPTIONS:
        raise fail("a RETURN option (MIN MAX ALL COUNT)", buf)
    return word, rest


def parse_search(buf: Buf) -> tuple[Search, Buf]:
    buf = sp(buf, "the search criteria")
    returns = None
    word, rest = keyword(buf)
    if word == "RETURN":
        # RFC 4466 §2.6: search-return-opts come before the charset.
        opts, buf = plist(sp(rest, "the RETURN options"), _return_option, "the RETURN options",
                          empty=True)
        returns = tuple(dict.fromkeys(opts))
        buf = sp(buf, "the search criteria")
        word, rest = keyword(buf)
    charset = None
    if word == "CHARSET":
        name, buf = astring(sp(rest, "the charset name"), "a charset name")
        charset = name.decode("ascii", "replace").upper()
        if charset not in CHARSETS:
            raise ParseError(f"unsupported charset {charset}", code=BADCHARSET)
        buf = sp(buf, "the search criteria")
    parser = _Parser(charset)
    keys = []
    while True:
        key, buf = parser.key(buf, 1)
        keys.append(key)
        if buf[:1] != b" ":
            break
        buf = buf[1:]
    return Search(charset, SearchKey("AND", tuple(keys)), returns), buf
