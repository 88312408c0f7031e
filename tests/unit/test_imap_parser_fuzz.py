"""Fuzzing the IMAP command reader: whatever bytes arrive, it answers with commands or
ParseErrors, in bounded work, and never lets a literal's data escape undecoded."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server.imap.parser import Command, CommandReader, NeedLiteral, ParseError, SequenceSet

# Real client traffic (Thunderbird, Apple Mail, mbsync, mutt, imaplib) plus extension syntax.
SEEDS = [
    b"1 capability\r\n",
    b'2 ID ("name" "Thunderbird" "version" "115.3.1")\r\n',
    b"3 authenticate PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b'4 list (SPECIAL-USE) "" "*"\r\n',
    b'5 select "INBOX" (CONDSTORE)\r\n',
    b"6 UID fetch 1:* (FLAGS) (CHANGEDSINCE 12345)\r\n",
    b"7 UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject "
    b"Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type "
    b"Reply-To)])\r\n",
    b"8 UID store 5 +Flags.SILENT (\\Seen $Junk)\r\n",
    b'9 UID move 5:7,9 "Trash"\r\n',
    b"10 IDLE\r\n",
    b"1.1 ENABLE QRESYNC\r\n",
    b"2.1 SELECT INBOX (QRESYNC (67890007 20050715194045000 41:211,214:541 (1:15,20 41:55,58)))"
    b"\r\n",
    b"3.1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 20050715194045000 VANISHED)\r\n",
    b'a APPEND "Sent" (\\Seen) "28-Nov-2026 12:00:00 +0000" {12+}\r\nSubject: x\r\n\r\n',
    b"a LOGIN {5}\r\nalice {6}\r\nsecret\r\n",
    b"a0006 UID SEARCH RETURN (MIN COUNT) CHARSET UTF-8 OR (SUBJECT {6}\r\nGr\xc3\xbc\xc3\x9f "
    b"FROM x) NOT (SEEN SINCE 1-Feb-2026 UID 1:*) HEADER X-Spam \"\" MODSEQ 5\r\n",
    b'a STATUS "Sent" (MESSAGES UIDNEXT HIGHESTMODSEQ SIZE)\r\n',
    b'a LIST (SUBSCRIBED) "" ("*" "&ZeVnLIqe-") RETURN (CHILDREN STATUS (MESSAGES))\r\n',
    b"a CREATE Drafts2 (USE (\\Drafts))\r\n",
    b"a FETCH 1 (BODY[1.2.MIME] BINARY.PEEK[1]<0.100> FULL)\r\n",
    b"a APPEND INBOX ~{3+}\r\n\x00\x01\x02 {1+}\r\nx\r\n",
    b"a UID EXPUNGE 3000:3002\r\n",
    b"DONE\r\n",
]

# Types a command's arguments may hold: no memoryview or bytearray (an undecoded piece of the
# input buffer) and no unexpected object.
ALLOWED = (str, bytes, int, bool, type(None), date, datetime, SequenceSet)


def check_value(value) -> None:
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            check_value(getattr(value, f.name))
    elif isinstance(value, tuple):
        for v in value:
            check_value(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_value(k)
            check_value(v)
    else:
        assert isinstance(value, ALLOWED), type(value)
        if isinstance(value, str):
            # A str came through a decoder: never the raw marker of a literal.
            assert "{" not in value or "}\r\n" not in value


def drain(reader: CommandReader, budget: int) -> list:
    out = []
    for _ in range(budget):
        event = reader.next()
        if event is None:
            return out
        assert isinstance(event, Command | NeedLiteral | ParseError), event
        if isinstance(event, ParseError):
            assert isinstance(event.message, str) and event.message
            assert event.tag is None or isinstance(event.tag, str)
        if isinstance(event, Command):
            check_value(event.args)
        out.append(event)
    raise AssertionError("next() kept returning events: unbounded work")


def feed_all(data: bytes, cuts: list[int], **limits) -> list:
    reader = CommandReader(**limits)
    out = []
    last = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        reader.feed(data[last:cut])
        # Every event needs at least one new byte, except the NeedLiteral/command pairs.
        out.extend(drain(reader, 2 * (cut - last) + 4))
        last = cut
    return out


FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8))
@example(b"a SEARCH " + b"(" * 3000 + b"\r\n", [])
@example(b"a LOGIN {99999999999999999999+}\r\n", [5])
@example(b"a SELECT {0000000000000000000000000005}\r\n", [])
def test_arbitrary_bytes(data, cuts):
    feed_all(data, cuts)
    feed_all(data, cuts, max_line=40, max_literal=16)


mutation = st.tuples(st.integers(0, 10_000), st.sampled_from(["insert", "delete", "replace"]),
                     st.binary(min_size=1, max_size=4))


def mutate(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for pos, op, chunk in edits:
        i = pos % (len(buf) + 1)
        if op == "insert":
            buf[i:i] = chunk
        elif op == "delete":
            del buf[i : i + len(chunk)]
        else:
            buf[i : i + len(chunk)] = chunk
    return bytes(buf)


@FUZZ
@given(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=6),
       st.lists(mutation, max_size=6), st.lists(st.integers(0, 2000), max_size=8))
def test_mutated_client_traffic(seeds, edits, cuts):
    data = mutate(b"".join(seeds), edits)
    whole = feed_all(data, [])
    # Same events however the bytes are cut.
    assert [_key(e) for e in feed_all(data, cuts)] == [_key(e) for e in whole]
    feed_all(data, cuts, max_line=50, max_literal=20)


@FUZZ
@given(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=6),
       st.lists(st.integers(0, 2000), max_size=10))
def test_seeds_parse_the_same_in_any_chunks(seeds, cuts):
    data = b"".join(seeds)
    got = feed_all(data, cuts)
    commands = [e for e in got if isinstance(e, Command)]
    errors = [e for e in got if isinstance(e, ParseError)]
    # "DONE" outside IDLE is the one seed that is not a command.
    assert len(errors) == seeds.count(b"DONE\r\n")
    assert len(commands) == len(seeds) - len(errors)


@FUZZ
@given(st.binary(max_size=300).filter(lambda b: b"{" not in b))
def test_an_error_never_poisons_the_reader(garbage):
    # Without a literal in play, the next line after any garbage is read as a command.
    got = feed_all(garbage + b"\r\nzz NOOP\r\n", [])
    assert got[-1] == Command("zz", "NOOP")


def _key(event):
    if isinstance(event, ParseError):
        return ("error", event.tag, event.message, event.code, event.discarding)
    return event
