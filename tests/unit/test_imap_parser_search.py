"""server.imap.parser: SEARCH criteria, CHARSET, RETURN (ESEARCH), MODSEQ."""

from __future__ import annotations

from datetime import date

import pytest

from server.imap.grammar.search import MAX_DEPTH
from server.imap.parser import (
    Command,
    CommandReader,
    NeedLiteral,
    ParseError,
    Search,
    SearchKey,
    parse_sequence_set,
)
from tests.support.imapparse import error, parse

K = SearchKey




def keys(criteria: bytes) -> tuple[SearchKey, ...]:
    """The top-level keys of ``SEARCH <criteria>``."""
    key = parse(b"a SEARCH " + criteria).args.key
    assert key.name == "AND"
    return key.args


def test_plain_search():
    # imaplib's M.search(None, 'ALL').
    assert parse(b"JBKE3 SEARCH ALL") == Command("JBKE3", "SEARCH", False, Search(
        None, K("AND", (K("ALL"),)), None))
    cmd = parse(b"a UID SEARCH UNDELETED SINCE 27-Nov-2026")
    assert (cmd.name, cmd.uid) == ("SEARCH", True)
    assert cmd.args.key.args == (K("UNDELETED"), K("SINCE", (date(2026, 11, 27),)))


@pytest.mark.parametrize("name", ["ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD",
                                  "RECENT", "SEEN", "UNANSWERED", "UNDELETED", "UNDRAFT",
                                  "UNFLAGGED", "UNSEEN"])
def test_flag_keys(name):
    assert keys(name.lower().encode()) == (K(name),)


@pytest.mark.parametrize("name", ["BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"])
def test_string_keys(name):
    assert keys(name.encode() + b' "hello world"') == (K(name, (b"hello world",)),)
    assert keys(name.encode() + b" atom") == (K(name, (b"atom",)),)
    assert keys(name.encode() + b" {3}\r\nx y") == (K(name, (b"x y",)),)


@pytest.mark.parametrize("name", ["BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"])
def test_date_keys(name):
    assert keys(name.encode() + b" 1-Feb-1994") == (K(name, (date(1994, 2, 1),)),)
    assert keys(name.encode() + b' "01-feb-1994"') == (K(name, (date(1994, 2, 1),)),)


def test_other_keys():
    assert keys(b"LARGER 1000 SMALLER 20000") == (K("LARGER", (1000,)), K("SMALLER", (20000,)))
    assert keys(b"KEYWORD $Junk UNKEYWORD $NotJunk") == (
        K("KEYWORD", ("$Junk",)), K("UNKEYWORD", ("$NotJunk",)))
    # Thunderbird looking for a message by Message-ID.
    assert keys(b"HEADER Message-ID <abc@example.org>") == (
        K("HEADER", ("MESSAGE-ID", b"<abc@example.org>")),)
    assert keys(b'HEADER "X-Spam-Flag" ""') == (K("HEADER", ("X-SPAM-FLAG", b"")),)
    assert keys(b"UID 1:*,5") == (K("UID", (parse_sequence_set("1:*,5"),)),)
    assert keys(b"1:5,7 UNSEEN") == (K("SEQSET", (parse_sequence_set("1:5,7"),)), K("UNSEEN"))
    assert keys(b"*") == (K("SEQSET", (parse_sequence_set("*"),)),)


def test_modseq():
    # RFC 7162 §3.1.5's examples.
    assert keys(b"MODSEQ 20010320162338") == (K("MODSEQ", (20010320162338,)),)
    assert keys(b'MODSEQ "/flags/\\\\draft" all 620162338') == (K("MODSEQ", (620162338,)),)
    assert keys(b'MODSEQ "/flags/$Junk" priv 0') == (K("MODSEQ", (0,)),)
    assert error(b'a SEARCH MODSEQ "/x" all 5').message == (
        'SEARCH: MODSEQ entry name must be "/flags/<flag>"')
    assert error(b'a SEARCH MODSEQ "/flags/x" some 5').message == (
        "SEARCH: MODSEQ entry type must be priv, shared or all")


def test_nesting():
    assert keys(b"OR (FROM alice SUBJECT {4+}\r\nlist) NOT (SEEN OR DELETED DRAFT)") == (
        K("OR", (K("AND", (K("FROM", (b"alice",)), K("SUBJECT", (b"list",)))),
                 K("NOT", (K("AND", (K("SEEN"), K("OR", (K("DELETED"), K("DRAFT"))))),)))),)
    assert keys(b"NOT NOT SEEN") == (K("NOT", (K("NOT", (K("SEEN"),)),)),)
    assert keys(b"OR OR SEEN DRAFT FLAGGED") == (
        K("OR", (K("OR", (K("SEEN"), K("DRAFT"))), K("FLAGGED"))),)
    assert keys(b"((SEEN))") == (K("AND", (K("AND", (K("SEEN"),)),)),)


def test_deep_nesting_is_refused_not_a_crash():
    ok = b"(" * (MAX_DEPTH - 1) + b"SEEN" + b")" * (MAX_DEPTH - 1)
    assert keys(ok)
    for deep in (b"(" * 5000 + b"SEEN" + b")" * 5000, b"NOT " * 5000 + b"SEEN",
                 b"OR " * 5000 + b"SEEN"):
        assert error(b"a SEARCH " + deep).message == (
            f"SEARCH: search criteria nested more than {MAX_DEPTH} levels deep")


def test_charset():
    # mutt: UID SEARCH CHARSET UTF-8 SUBJECT {n} with the text as a literal.
    reader = CommandReader()
    reader.feed(b"a0006 UID SEARCH CHARSET UTF-8 SUBJECT {5}\r\n")
    assert reader.next() == NeedLiteral("a0006", 5)
    reader.feed("Grüße".encode()[:5] + b"\r\n")
    assert isinstance(reader.next(), ParseError)  # cut in the middle of "ß": not UTF-8
    reader.feed(b"a0007 UID SEARCH CHARSET utf-8 SUBJECT {7}\r\n" + "Grüße".encode() + b"\r\n")
    events = [reader.next(), reader.next()]
    assert events[0] == NeedLiteral("a0007", 7)
    assert events[1].args == Search("UTF-8", K("AND", (K("SUBJECT", ("Grüße".encode(),)),)))
    assert parse(b"a SEARCH CHARSET US-ASCII TEXT x").args.charset == "US-ASCII"
    # No CHARSET: UTF-8 as IMAP4rev2 clients send it (RFC 9051 §6.4.4).
    assert keys('SUBJECT "€"'.encode()) == (K("SUBJECT", ("€".encode(),)),)


def test_unsupported_charset_carries_badcharset():
    err = error(b"a SEARCH CHARSET ISO-8859-1 SUBJECT x")
    assert (err.tag, err.message, err.code) == (
        "a", "SEARCH: unsupported charset ISO-8859-1", "BADCHARSET (US-ASCII UTF-8)")


@pytest.mark.parametrize(("criteria", "message"), [
    (b"CHARSET US-ASCII SUBJECT {2}\r\n\xc3\xa9",
     "8-bit search text with CHARSET US-ASCII; use CHARSET UTF-8"),
    (b'SUBJECT "\xff"', "search text is not valid UTF-8"),
    (b'HEADER Subject "\xe9t\xe9"', "search text is not valid UTF-8"),
])
def test_charset_errors(criteria, message):
    assert error(b"a SEARCH " + criteria).message == "SEARCH: " + message


def test_return_options():
    # RFC 4731 ESEARCH.
    args = parse(b"a UID SEARCH RETURN (MIN MAX COUNT) UNSEEN").args
    assert args.returns == ("MIN", "MAX", "COUNT")
    assert parse(b"a SEARCH RETURN () ALL").args.returns == ()  # () means ALL
    args = parse(b"a SEARCH RETURN (ALL) CHARSET UTF-8 FROM x").args
    assert (args.returns, args.charset) == (("ALL",), "UTF-8")
    assert parse(b"a SEARCH ALL").args.returns is None


@pytest.mark.parametrize(("criteria", "message"), [
    (b"", "expected a space before the search criteria, found end of line"),
    (b" ", "expected a search key, found ' '"),
    (b"ALL ", "expected a search key, found end of line"),
    (b"FOO", "unknown search key FOO"),
    (b"SUBJECT", "expected a space before the SUBJECT argument, found end of line"),
    (b"SINCE 1994-02-01", "expected a date like 1-Feb-2026, found '1994-02-01'"),
    (b"SINCE 31-Feb-1994", "invalid date: day is out of range for month"),
    (b'SINCE "1-Feb-1994', "expected '\"' after the date, found end of line"),
    (b"LARGER x", "expected LARGER size, found 'x'"),
    (b"KEYWORD \\Seen", "expected a keyword after KEYWORD, found '\\\\Seen'"),
    (b"OR SEEN", "expected a space before the second OR key, found end of line"),
    (b"NOT", "expected a space before the NOT argument, found end of line"),
    (b"(SEEN", "expected a space or ')' in the search key list, found end of line"),
    (b"()", "the search key list must not be empty"),
    (b"UID 0", "0 is not a valid message number or UID (RFC 3501 nz-number)"),
    (b"$", "the SEARCHRES variable $ (RFC 5182) is not supported"),
    (b"HEADER a:b x", "invalid header field name b'a:b'"),
    (b"RETURN (SAVE) ALL", "RETURN (SAVE) needs SEARCHRES (RFC 5182), which is not supported"),
    (b"RETURN (FOO) ALL", "expected a RETURN option (MIN MAX ALL COUNT), found 'FOO) ALL'"),
    (b"RETURN (MIN)", "expected a space before the search criteria, found end of line"),
    (b"CHARSET", "expected a space before the charset name, found end of line"),
    (b"SEEN)", "unexpected ')' after the arguments"),
])
def test_search_errors(criteria, message):
    err = error(b"a SEARCH" + (b" " + criteria if criteria else b""))
    assert (err.tag, err.message) == ("a", "SEARCH: " + message)
