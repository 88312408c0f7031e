"""server.imap.parser: sequence sets, FETCH, STORE, COPY, MOVE, UID EXPUNGE."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.imap.parser import (
    Command,
    CopyMove,
    FetchItem,
    ParseError,
    Section,
    SequenceSet,
    Store,
    UidExpunge,
    parse_sequence_set,
)
from tests.support.imapparse import error, parse


def items(line: bytes) -> tuple[FetchItem, ...]:
    return parse(line).args.items


# --- sequence sets ---


def test_sequence_set_forms():
    assert parse_sequence_set("1:4,7,10:*").ranges == ((1, 4), (7, 7), (10, None))
    assert parse_sequence_set(b"*").ranges == ((None, None),)
    assert parse_sequence_set("*:3").ranges == ((None, 3),)
    assert str(parse_sequence_set("1:4,7,*,10:*")) == "1:4,7,*,10:*"


def test_values_and_contains():
    s = parse_sequence_set("2:4,3,9,7:6")
    assert s.values(100) == [2, 3, 4, 6, 7, 9]
    assert s.values(6) == [2, 3, 4, 6]
    assert [n for n in range(12) if s.contains(n, 8)] == [2, 3, 4, 6, 7]


@pytest.mark.parametrize("text", ["1", "7", "123456789", "1234567890", "4294967295",
                                  "4294967296", "0", "007", "12:12", "3,3"])
def test_one_number_in_a_command_parses_as_the_whole_set_would(text):
    # seqset.parse takes a lone number on a shorter path than parse_sequence_set
    from server.imap.grammar import seqset

    try:
        expected = parse_sequence_set(text)
    except ParseError as err:
        with pytest.raises(ParseError):
            seqset.parse(memoryview(text.encode() + b" X"))
        assert "sequence number" in err.message or "0 is not" in err.message
        return
    got, rest = seqset.parse(memoryview(text.encode() + b" X"))
    assert got == expected and bytes(rest) == b" X"


def test_reversed_ranges_are_the_same_range():
    assert parse_sequence_set("5:3").values(10) == [3, 4, 5]
    assert parse_sequence_set("*:3").values(5) == [3, 4, 5]


def test_star_is_the_largest_number():
    assert parse_sequence_set("1:*").values(3) == [1, 2, 3]
    # RFC 3501 §6.4.8: "100:*" on a mailbox whose largest UID is 50 still names 50.
    assert parse_sequence_set("100:*").values(50) == [50]
    assert parse_sequence_set("100:*").contains(50, 50)
    assert parse_sequence_set("60:70").values(50) == []


def test_empty_mailbox():
    for text in ("*", "1:*", "*:1", "1", "5:9"):
        s = parse_sequence_set(text)
        assert s.values(0) == []
        assert s.intervals(0) == []
        assert not s.contains(1, 0)


def test_huge_ranges_cost_only_what_exists():
    s = parse_sequence_set("1:4294967295,4294967295")
    start = time.perf_counter()
    assert s.values(10) == list(range(1, 11))
    assert s.intervals(4294967295) == [(1, 4294967295)]
    assert s.contains(4000000000, 4294967295)
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize(("text", "message"), [
    ("0", "0 is not a valid message number or UID (RFC 3501 nz-number)"),
    ("1:0", "0 is not a valid message number or UID (RFC 3501 nz-number)"),
    ("00", "0 is not a valid message number or UID (RFC 3501 nz-number)"),
    ("4294967296", "sequence number 4294967296 is too large (at most 4294967295)"),
    ("9" * 5000, "sequence number 999999999999999999999999 is too large (at most 4294967295)"),
    ("1,,2", "empty element in sequence set (stray ',')"),
    ("1,", "empty element in sequence set (stray ',')"),
    ("1:2:3", "invalid sequence number '2:3'"),
    ("", "empty sequence set"),
    ("$", "the SEARCHRES variable $ (RFC 5182) is not supported"),
    ("1:x", "invalid sequence number 'x'"),
])
def test_sequence_set_errors(text, message):
    with pytest.raises(ParseError) as info:
        parse_sequence_set(text)
    assert info.value.message == message


ranges = st.lists(st.tuples(st.one_of(st.none(), st.integers(1, 60)),
                            st.one_of(st.none(), st.integers(1, 60))), min_size=1, max_size=6)


@given(ranges, st.integers(0, 70))
def test_values_match_the_definition(rs, largest):
    s = SequenceSet(tuple(rs))
    expected = set()
    for a, b in rs:
        a = largest if a is None else a
        b = largest if b is None else b
        expected |= {n for n in range(min(a, b), max(a, b) + 1) if 1 <= n <= largest}
    assert s.values(largest) == sorted(expected)
    assert [n for n in range(0, 72) if s.contains(n, largest)] == sorted(expected)
    assert parse_sequence_set(str(s)) == s


# --- FETCH ---


def test_thunderbird_header_fetch():
    line = (b"A1 UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc "
            b"Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To "
            b"Content-Type Reply-To)])")
    cmd = parse(line)
    assert (cmd.name, cmd.uid) == ("FETCH", True)
    assert cmd.args.seqset == parse_sequence_set("1:*")
    fields = ("FROM", "TO", "CC", "BCC", "SUBJECT", "DATE", "MESSAGE-ID", "PRIORITY",
              "X-PRIORITY", "REFERENCES", "NEWSGROUPS", "IN-REPLY-TO", "CONTENT-TYPE",
              "REPLY-TO")
    assert cmd.args.items == (
        FetchItem("UID"), FetchItem("RFC822.SIZE"), FetchItem("FLAGS"),
        FetchItem("BODY", Section((), "HEADER.FIELDS", fields), None, True))


def test_simple_items_and_macros():
    for name in ("ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
                 "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID", "MODSEQ"):
        assert items(b"a FETCH 1 " + name.lower().encode()) == (FetchItem(name),)
    fast = (FetchItem("FLAGS"), FetchItem("INTERNALDATE"), FetchItem("RFC822.SIZE"))
    assert items(b"a FETCH 1:* FAST") == fast
    assert items(b"a FETCH 1:* all") == (*fast, FetchItem("ENVELOPE"))
    assert items(b"a FETCH 1:* FULL") == (*fast, FetchItem("ENVELOPE"), FetchItem("BODY"))
    # Duplicates are dropped so no response repeats an item.
    assert items(b"a FETCH 1 (FLAGS FAST UID FLAGS)") == (*fast, FetchItem("UID"))


def test_sections():
    assert items(b"a FETCH 1 BODY[]") == (FetchItem("BODY", Section()),)
    assert items(b"a FETCH 1 BODY.PEEK[]<0.16384>") == (
        FetchItem("BODY", Section(), (0, 16384), True),)
    assert items(b"a FETCH 1 (BODY[HEADER] BODY[TEXT] BODY[1] BODY[1.2.3] BODY[2.MIME] "
                 b"BODY[1.HEADER] BODY[3.TEXT])") == (
        FetchItem("BODY", Section((), "HEADER")), FetchItem("BODY", Section((), "TEXT")),
        FetchItem("BODY", Section((1,))), FetchItem("BODY", Section((1, 2, 3))),
        FetchItem("BODY", Section((2,), "MIME")), FetchItem("BODY", Section((1,), "HEADER")),
        FetchItem("BODY", Section((3,), "TEXT")))
    assert items(b'a FETCH 1 BODY[4.2.HEADER.FIELDS.NOT ("X-Spam" {4}\r\nDate)]<10.20>') == (
        FetchItem("BODY", Section((4, 2), "HEADER.FIELDS.NOT", ("X-SPAM", "DATE")), (10, 20)),)
    assert items(b"a FETCH 1 body.peek[header.fields (x-tuid)]") == (
        FetchItem("BODY", Section((), "HEADER.FIELDS", ("X-TUID",)), None, True),)


def test_binary_items():
    # RFC 3516.
    assert items(b"a FETCH 1 (BINARY[1] BINARY.PEEK[1.2]<0.100> BINARY.SIZE[2] BINARY[])") == (
        FetchItem("BINARY", Section((1,))), FetchItem("BINARY", Section((1, 2)), (0, 100), True),
        FetchItem("BINARY.SIZE", Section((2,))), FetchItem("BINARY", Section()))


def test_fetch_modifiers():
    args = parse(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)").args
    assert (args.changedsince, args.vanished) == (12345, False)
    # Apple Mail after SELECT ... (QRESYNC ...).
    args = parse(b"5.2 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 20050715194045000 VANISHED)").args
    assert (args.changedsince, args.vanished) == (20050715194045000, True)
    assert parse(b"a UID FETCH 1:* FLAGS (VANISHED CHANGEDSINCE 1)").args.vanished


@pytest.mark.parametrize(("line", "message"), [
    (b"a FETCH 1 (FLAGS", "FETCH: expected a space or ')' in the FETCH item list, found end "
                          "of line"),
    (b"a FETCH 1 ()", "FETCH: the FETCH item list must not be empty"),
    (b"a FETCH 1 FOO", "FETCH: unknown FETCH item FOO"),
    (b"a FETCH 1 BODY.PEEK", "FETCH: expected '[' after BODY.PEEK (a section is required, e.g. "
                             "BODY.PEEK[]), found end of line"),
    (b"a FETCH 1 BODY[HEADER", "FETCH: expected ']' to close the BODY section, found end of "
                               "line"),
    (b"a FETCH 1 BODY[MIME]", "FETCH: MIME is only valid after a part number, e.g. "
                              "BODY[1.MIME]"),
    (b"a FETCH 1 BODY[0]", "FETCH: a part number must not be 0"),
    (b"a FETCH 1 BODY[1.]", "FETCH: expected HEADER, HEADER.FIELDS, TEXT, MIME or ']' in the "
                            "BODY section, found ']'"),
    (b"a FETCH 1 BODY[1HEADER]", "FETCH: expected ']' to close the BODY section, found "
                                 "'HEADER]'"),
    (b"a FETCH 1 BODY[FOO]", "FETCH: expected a part number, HEADER, HEADER.FIELDS, TEXT or "
                             "']' in the BODY section, found 'FOO]'"),
    (b"a FETCH 1 BODY[HEADER.FIELDS]", "FETCH: expected a space before the header field list, "
                                       "found ']'"),
    (b"a FETCH 1 BODY[HEADER.FIELDS ()]", "FETCH: the header field list must not be empty"),
    (b'a FETCH 1 BODY[HEADER.FIELDS ("a:b")]', "FETCH: invalid header field name b'a:b'"),
    (b"a FETCH 1 BODY[]<5>", "FETCH: expected '.' and a byte count in <origin.count>, found "
                             "'>'"),
    (b"a FETCH 1 BODY[]<5.0>", "FETCH: partial count must not be 0"),
    (b"a FETCH 1 BODY[]<5.10", "FETCH: expected '>' to close <origin.count>, found end of "
                               "line"),
    (b"a FETCH 1 BINARY[TEXT]", "FETCH: expected ']' to close the BINARY section (part numbers "
                                "only), found 'TEXT]'"),
    (b"a FETCH 1 BINARY.SIZE", "FETCH: expected '[' after BINARY.SIZE, found end of line"),
    (b"a FETCH 0 FLAGS", "FETCH: 0 is not a valid message number or UID (RFC 3501 nz-number)"),
    (b"a FETCH FLAGS", "FETCH: expected a sequence set like 1:5,7 or 1:*, found 'FLAGS'"),
    (b"a FETCH 1 FLAGS (VANISHED CHANGEDSINCE 5)",
     "FETCH: VANISHED is only allowed with UID FETCH (RFC 7162 §3.2.6)"),
    (b"a UID FETCH 1 FLAGS (VANISHED)", "UID FETCH: VANISHED needs CHANGEDSINCE (RFC 7162 "
                                        "§3.2.6)"),
    (b"a FETCH 1 FLAGS (CHANGEDSINCE)", "FETCH: expected a space before the mod-sequence, "
                                        "found ')'"),
    (b"a FETCH 1 FLAGS (CHANGEDSINCE 1 CHANGEDSINCE 2)", "FETCH: CHANGEDSINCE given twice"),
    (b"a FETCH 1 FLAGS (FOO)", "FETCH: unknown FETCH modifier FOO (CHANGEDSINCE n, VANISHED)"),
    (b"a FETCH 1 FLAGS ()", "FETCH: the FETCH modifiers must not be empty"),
    (b"a FETCH 1 FLAGS x", "FETCH: expected '(' to open the FETCH modifiers, found 'x'"),
    (b"a FETCH $ FLAGS", "FETCH: the SEARCHRES variable $ (RFC 5182) is not supported"),
])
def test_fetch_errors(line, message):
    err = error(line)
    assert (err.tag, err.message) == ("a", message)


# --- STORE ---


def test_store_forms():
    assert parse(b"a UID STORE 5 +FLAGS.SILENT (\\Seen $Junk)").args == Store(
        parse_sequence_set("5"), "+", True, ("\\Seen", "$Junk"))
    # imaplib: M.store(num, '+FLAGS', '\\Deleted') sends the flag without parentheses.
    assert parse(b"JBKE5 STORE 1 +FLAGS \\Deleted").args == Store(
        parse_sequence_set("1"), "+", False, ("\\Deleted",))
    assert parse(b"a STORE 1:3 -flags (\\flagged)").args.flags == ("\\Flagged",)
    assert parse(b"a STORE 1:3 -flags (\\flagged)").args.mode == "-"
    assert parse(b"a STORE 2 FLAGS ()").args == Store(parse_sequence_set("2"), "", False, ())
    assert parse(b"a STORE 2 FLAGS.SILENT \\Seen \\Answered $label1").args.flags == (
        "\\Seen", "\\Answered", "$label1")
    # RFC 7162 §3.1.3.
    assert parse(b"a UID STORE 7 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)").args \
        == Store(parse_sequence_set("7"), "+", True, ("\\Deleted",), 320162338)
    assert parse(b"a STORE 1 (UNCHANGEDSINCE 0) FLAGS (\\Seen)").args.unchangedsince == 0


@pytest.mark.parametrize(("line", "message"), [
    (b"a STORE 1 +FLAGS (\\Recent)",
     "STORE: \\Recent is set by the server and cannot be stored (RFC 3501 §2.3.2)"),
    (b"a STORE 1 +FLAGS (\\Unknown)", "STORE: unknown system flag \\Unknown"),
    (b"a STORE 1 LABELS (x)", "STORE: expected FLAGS, +FLAGS or -FLAGS (optionally .SILENT), "
                              "found 'LABELS (x)'"),
    (b"a STORE 1 +FLAGS", "STORE: expected a space before the flags, found end of line"),
    (b"a STORE 1 +FLAGSX (\\Seen)", "STORE: expected a space before the flags, found 'X "
                                    "(\\\\Seen)'"),
    (b"a STORE 1 +FLAGS (\\Seen", "STORE: expected a space or ')' in the flag list, found end "
                                  "of line"),
    (b"a STORE 1 (FOO 1) FLAGS ()", "STORE: expected UNCHANGEDSINCE, the only STORE modifier, "
                                    "found 'FOO 1) FLAGS ()'"),
    (b"a STORE 1 (UNCHANGEDSINCE 1 UNCHANGEDSINCE 2) FLAGS ()",
     "STORE: UNCHANGEDSINCE given twice"),
    (b"a STORE 1 +FLAGS (\"quoted\")", "STORE: expected a flag, found '\"quoted\")'"),
])
def test_store_errors(line, message):
    assert error(line).message == message


# --- COPY, MOVE, UID EXPUNGE ---


def test_copy_move_expunge():
    assert parse(b'13 UID copy 5 "Trash"') == Command("13", "COPY", True, CopyMove(
        parse_sequence_set("5"), "Trash"))
    assert parse(b"a MOVE 1:3,9 Archive/2026") == Command("a", "MOVE", False, CopyMove(
        parse_sequence_set("1:3,9"), "Archive/2026"))
    assert parse(b"a UID MOVE 42 &ZeVnLIqe-").args.mailbox == "日本語"
    assert parse(b"a UID EXPUNGE 3000:3002") == Command("a", "EXPUNGE", True, UidExpunge(
        parse_sequence_set("3000:3002")))
    assert parse(b"a EXPUNGE") == Command("a", "EXPUNGE", False, None)
    assert error(b"a UID EXPUNGE").message == (
        "UID EXPUNGE: expected a space before the UID set, found end of line")
    assert error(b"a COPY 1").message == (
        "COPY: expected a space before the destination mailbox, found end of line")


def test_a_fetch_item_list_seen_before_parses_the_same_with_its_own_messages():
    # The item list after the sequence set is remembered: the messages, UID-ness and
    # modifiers must still be the command's own, and an error must be raised every time.
    first = parse(b"a FETCH 1 (BODY.PEEK[] FLAGS)")
    again = parse(b"b FETCH 7:9 (BODY.PEEK[] FLAGS)")
    assert first.args.items == again.args.items
    assert first.args.seqset != again.args.seqset and again.tag == "b"
    assert parse(b"c UID FETCH 5 (FLAGS) (CHANGEDSINCE 12 VANISHED)").args.vanished
    for _ in range(2):
        assert "VANISHED is only allowed" in error(
            b"d FETCH 5 (FLAGS) (CHANGEDSINCE 12 VANISHED)").message
        assert "unexpected" in error(b"e FETCH 5 FLAGS)").message
        assert "FETCH item" in error(b"f FETCH 5 (FLAGZ[)").message
