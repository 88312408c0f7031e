"""server.imap.parser.CommandReader: framing, literals, limits, raw lines, chunked input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.imap.parser import Command, CommandReader, NeedLiteral, ParseError


def events(reader: CommandReader) -> list:
    out = []
    while (event := reader.next()) is not None:
        out.append(event)
    return out


def run(data: bytes, **limits) -> list:
    reader = CommandReader(**limits)
    reader.feed(data)
    return events(reader)


def key(event):
    """Comparable form of an event (ParseError has no __eq__)."""
    if isinstance(event, ParseError):
        return ("error", event.tag, event.message, event.code, event.discarding)
    return event


def chunked(data: bytes, cuts: list[int], **limits) -> list:
    reader = CommandReader(**limits)
    out = []
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        reader.feed(data[last:cut])
        out.extend(events(reader))
        last = cut
    return [key(e) for e in out]


# --- plain lines ---


def test_one_command_per_line_and_pipelined():
    got = run(b"a1 NOOP\r\na2 CAPABILITY\r\na3 LOGOUT\r\n")
    assert got == [Command("a1", "NOOP"), Command("a2", "CAPABILITY"), Command("a3", "LOGOUT")]


def test_needs_the_whole_line():
    reader = CommandReader()
    reader.feed(b"a1 NO")
    assert reader.next() is None
    reader.feed(b"OP\r")
    assert reader.next() is None
    reader.feed(b"\n")
    assert reader.next() == Command("a1", "NOOP")
    assert reader.next() is None


def test_bare_lf_and_empty_lines():
    # Hand-typed sessions (telnet, nc) send LF only; a stray CRLF between commands is ignored.
    assert run(b"\r\n\na1 NOOP\n\r\na2 NOOP\r\n") == [Command("a1", "NOOP"), Command("a2", "NOOP")]


def test_errors_do_not_poison_the_reader():
    got = run(b"a1 FROBNICATE\r\n\x01\x02\r\na2 FETCH\r\na3 NOOP\r\n")
    assert [key(e)[:3] for e in got[:3]] == [
        ("error", "a1", "unknown command FROBNICATE"),
        ("error", None, "expected a tag and a space before the command, found '\\x01\\x02'"),
        ("error", "a2", "FETCH: expected a space before the sequence set, found end of line"),
    ]
    assert got[3] == Command("a3", "NOOP")


def test_buffered_counts_unread_bytes():
    reader = CommandReader()
    reader.feed(b"a1 STARTTLS\r\na2 LOGIN x y\r\n")
    assert reader.next() == Command("a1", "STARTTLS")
    assert reader.buffered() == len(b"a2 LOGIN x y\r\n")


# --- literals ---


def test_synchronising_literal_asks_once_then_completes():
    reader = CommandReader()
    reader.feed(b"a1 LOGIN {5}\r\n")
    assert reader.next() == NeedLiteral("a1", 5)
    assert reader.next() is None  # waiting for the data, not asking again
    reader.feed(b"alice {6}\r\n")
    assert reader.next() == NeedLiteral("a1", 6)
    reader.feed(b"s3cr\"t\r\n")
    cmd = reader.next()
    assert (cmd.name, cmd.args.user, cmd.args.password) == ("LOGIN", "alice", 's3cr"t')
    assert reader.next() is None


def test_synchronising_literal_sent_early_is_still_announced():
    # A client that did not wait breaks RFC 3501 §7.5; it gets its "+" anyway, and the reader
    # behaves the same however the bytes were cut.
    got = run(b"a1 SELECT {5}\r\nDraft\r\n")
    assert got[0] == NeedLiteral("a1", 5)
    assert got[1].args.mailbox == "Draft"


def test_non_synchronising_literal_is_not_announced():
    got = run(b"a1 APPEND INBOX {11+}\r\nhello\r\nbye!\r\n")
    assert len(got) == 1
    assert got[0].args.messages[0].data == b"hello\r\nbye!"


def test_literal_data_is_never_parsed_as_commands():
    # Message content that looks like commands stays content.
    body = b"a2 DELETE INBOX\r\na3 LOGOUT\r\n"
    got = run(b"a1 APPEND INBOX {%d+}\r\n%s\r\na4 NOOP\r\n" % (len(body), body))
    assert got[0].args.messages[0].data == body
    assert got[1] == Command("a4", "NOOP")
    assert len(got) == 2


def test_literal8_and_zero_length_literal():
    got = run(b"a1 APPEND INBOX ~{3+}\r\n\x00\x01\x02\r\na2 SELECT {0}\r\n\r\n")
    assert got[0].args.messages[0].data == b"\x00\x01\x02"
    assert got[0].args.messages[0].binary
    assert got[1] == NeedLiteral("a2", 0)
    assert got[2].args.mailbox == ""


def test_doomed_command_is_refused_before_its_literal():
    # The command is parsed at its first synchronising literal: no point uploading 10 MB to a
    # command that is already wrong.
    got = run(b"a1 FETCH 1 {10000000}\r\na2 FROB {5}\r\n* LOGIN {3}\r\na3 NOOP\r\n")
    assert [key(e)[:2] for e in got[:3]] == [("error", "a1"), ("error", "a2"), ("error", None)]
    assert "FETCH: expected a FETCH item" in got[0].message
    assert got[1].message == "unknown command FROB"
    assert not any(e.discarding for e in got[:3])
    assert got[3] == Command("a3", "NOOP")


def test_synchronising_literal_over_the_limit():
    # The client waits for "+", gets BAD instead and sends nothing (RFC 3501 §7.5).
    got = run(b"a1 APPEND INBOX {1001}\r\na2 NOOP\r\n", max_literal=1000)
    assert key(got[0]) == ("error", "a1", "literal over the limit of 1000 bytes", "TOOBIG",
                           False)
    assert got[1] == Command("a2", "NOOP")


def test_non_synchronising_literal_over_the_limit_is_discarded():
    # RFC 7888 §4: the client does not wait, so the reader throws the literal away itself,
    # and the rest of the command after it.
    data = b"x" * 600 + b"\r\na9 DELETE INBOX\r\n" + b"y" * 400  # 1020 bytes
    stream = b"a1 APPEND INBOX {1020+}\r\n" + data + b" tail {3+}\r\nabc\r\na2 NOOP\r\n"
    for cuts in ([], [30], [30, 500, 700, 1040], list(range(0, len(stream), 7))):
        got = chunked(stream, cuts, max_literal=1000)
        assert got == [("error", "a1", "literal over the limit of 1000 bytes", "TOOBIG", True),
                       Command("a2", "NOOP")], cuts


def test_literals_of_one_command_share_the_limit():
    stream = b"a1 APPEND INBOX {600+}\r\n" + b"x" * 600 + b" {600+}\r\n" + b"y" * 600
    got = run(stream + b"\r\na2 NOOP\r\n", max_literal=1000)
    assert key(got[0]) == ("error", "a1", "literals in one command over the limit of 1000 bytes",
                           "TOOBIG", True)
    assert got[1] == Command("a2", "NOOP")
    assert len(got) == 2


def test_literal_size_with_too_many_digits_is_not_a_literal():
    got = run(b"a1 SELECT {000000000000000000001}\r\na2 NOOP\r\n")
    assert "SELECT: a literal is {size}" in got[0].message
    assert got[1] == Command("a2", "NOOP")


def test_literal_marker_must_end_the_line():
    got = run(b"a1 LOGIN {3} x\r\na2 NOOP\r\n")
    assert got[0].message.startswith("LOGIN: a literal is")
    assert got[1] == Command("a2", "NOOP")


def test_nul_only_in_literal8():
    got = run(b"a1 LOGIN {3+}\r\na\x00b pw\r\n")
    assert "NUL" in got[0].message


# --- long lines ---


def test_overlong_line_is_refused_and_skipped():
    reader = CommandReader(max_line=100)
    reader.feed(b"a1 SEARCH " + b"1," * 60)
    err = reader.next()
    assert key(err) == ("error", "a1", "command line too long (over 100 bytes)", None, True)
    reader.feed(b"1," * 500)
    assert reader.next() is None
    reader.feed(b"1\r\na2 NOOP\r\n")
    assert events(reader) == [Command("a2", "NOOP")]


def test_overlong_line_in_one_piece():
    got = run(b"a1 SEARCH " + b"1," * 60 + b"1\r\na2 NOOP\r\n", max_line=100)
    assert got[0].tag == "a1" and "too long" in got[0].message
    assert got[1] == Command("a2", "NOOP")


def test_overlong_line_ending_in_a_non_synchronising_literal():
    # Its literal is still on its way and must not be read as commands.
    stream = b"a1 APPEND INBOX " + b"(" * 200 + b" {17+}\r\na2 DELETE INBOX\r\n\r\na3 NOOP\r\n"
    for cuts in ([], [50], [50, 150], list(range(0, len(stream), 3))):
        got = chunked(stream, cuts, max_line=100)
        assert got[0][:2] == ("error", "a1")
        assert got[1:] == [Command("a3", "NOOP")], cuts


def test_text_of_all_lines_counts():
    lines = b"a1 LOGIN {1+}\r\nx " + b"{1+}\r\ny" * 40 + b"\r\na2 NOOP\r\n"
    got = run(lines, max_line=100)
    assert "too long" in got[0].message
    assert got[-1] == Command("a2", "NOOP")


def test_unreadable_tag_on_overlong_line():
    got = run(b"(" * 200 + b"\r\na2 NOOP\r\n", max_line=100)
    assert got[0].tag is None
    assert got[1] == Command("a2", "NOOP")


# --- raw lines: IDLE, AUTHENTICATE ---


def test_idle_done():
    reader = CommandReader()
    reader.feed(b"a1 IDLE\r\nDO")
    assert reader.next() == Command("a1", "IDLE")
    assert reader.read_line() is None
    reader.feed(b"NE\r\na2 NOOP\r\n")
    assert reader.read_line() == b"DONE\r\n"
    assert reader.next() == Command("a2", "NOOP")


def test_authenticate_continuation_line():
    reader = CommandReader()
    reader.feed(b"a1 AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n")
    cmd = reader.next()
    assert cmd.args.initial is None
    assert reader.read_line() == b"AGFsaWNlAHNlY3JldA==\r\n"


def test_read_line_after_a_partial_next():
    reader = CommandReader()
    reader.feed(b"a1 IDLE\r\nDO")
    assert reader.next() == Command("a1", "IDLE")
    assert reader.next() is None  # the connection may have looked for a command meanwhile
    reader.feed(b"NE\r\n")
    assert reader.read_line() == b"DONE\r\n"


def test_read_line_over_the_limit_is_cut_and_skipped():
    reader = CommandReader(max_line=10)
    reader.feed(b"x" * 25)
    assert reader.read_line() == b"x" * 10
    reader.feed(b"x" * 5 + b" {5+}\r\na1 NOOP\r\n")  # a raw line's "{5+}" means nothing
    assert reader.next() == Command("a1", "NOOP")
    reader.feed(b"y" * 30 + b"\r\nDONE\r\n")
    assert reader.read_line() == b"y" * 10
    assert reader.read_line() == b"DONE\r\n"


def test_read_line_refused_inside_a_command():
    reader = CommandReader()
    reader.feed(b"a1 LOGIN {5}\r\n")
    assert reader.next() == NeedLiteral("a1", 5)
    with pytest.raises(RuntimeError):
        reader.read_line()


# --- any chunking gives the same events ---

STREAM = (
    b"A1 CAPABILITY\r\n"
    b"A2 LOGIN {5}\r\nalice {6+}\r\nsecret\r\n"
    b'A3 APPEND "Sent" (\\Seen) "28-Nov-2026 12:00:00 +0000" {31+}\r\n'
    b"Subject: hi\r\n\r\nA9 LOGOUT\r\n{3}\r\n\r\n"
    b"A4 SEARCH CHARSET UTF-8 SUBJECT {4}\r\n\xe2\x82\xac!\r\n"
    b"A5 FOO {2}\r\n"
    b"A6 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 5 VANISHED)\r\n"
    b"A7 APPEND INBOX {2000+}\r\n" + b"z" * 2000 + b"\r\n"
    b"A8 " + b"NOOP " * 40 + b"\r\n"
    b"A9 IDLE\r\n"
)
LIMITS = {"max_line": 150, "max_literal": 1000}


def test_stream_events():
    got = [key(e) for e in run(STREAM, **LIMITS)]
    assert [(e[0], e[1]) if isinstance(e, tuple) else e.tag for e in got] == [
        "A1", "A2", "A2", "A3", "A4", "A4", ("error", "A5"), "A6", ("error", "A7"),
        ("error", "A8"), "A9"]


def test_every_split_point_gives_the_same_events():
    whole = chunked(STREAM, [], **LIMITS)
    for cut in range(len(STREAM) + 1):
        assert chunked(STREAM, [cut], **LIMITS) == whole, cut


def test_byte_at_a_time():
    assert chunked(STREAM, list(range(len(STREAM))), **LIMITS) == chunked(STREAM, [], **LIMITS)


@settings(max_examples=200)
@given(st.lists(st.integers(0, len(STREAM)), max_size=40))
def test_random_chunks_give_the_same_events(cuts):
    assert chunked(STREAM, cuts, **LIMITS) == chunked(STREAM, [], **LIMITS)


def test_a_prefix_never_yields_a_command_early():
    # Feeding only part of the stream gives a prefix of the events: nothing is returned before
    # all its bytes (literal data included) are there.
    whole = chunked(STREAM, [], **LIMITS)
    for n in range(len(STREAM)):
        part = chunked(STREAM[:n], [], **LIMITS)
        assert part == whole[: len(part)], n


def test_more_waiting_tells_a_pipelined_command_from_a_partial_one():
    r = CommandReader()
    r.feed(b"a NOOP\r\nb NOOP\r\nc NO")
    assert r.next().tag == "a" and r.more_waiting()
    assert r.next().tag == "b" and not r.more_waiting()  # "c NO" is not a line yet
    r.feed(b"OP\r\n")
    assert r.more_waiting() and r.next().tag == "c" and not r.more_waiting()
