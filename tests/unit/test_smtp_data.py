"""``DataReader`` must read DATA exactly as aiosmtpd's line-at-a-time loop did, however the
bytes are split into chunks: same end, same unstuffing, same 500/552, same pipelined rest."""

from __future__ import annotations

import random

import pytest

from server.smtp.data import NOMINAL, TOO_LONG, TOO_MUCH, DataReader

LINE_LIMIT = 1001  # aiosmtpd's SMTP.line_length_limit


def reference(stream: bytes, size_limit: int | None, line_limit: int = LINE_LIMIT):
    """aiosmtpd 1.4's smtp_DATA loop over complete lines: (state, message, rest)."""
    pos, size, state, lines = 0, 0, NOMINAL, []
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line, pos = stream[pos:end], end
        if line == b".\r\n":
            break
        if state == NOMINAL and len(line) > line_limit:
            state = TOO_LONG
        size += len(line)
        if state == NOMINAL and size_limit and size > size_limit:
            state = TOO_MUCH
        lines.append(line[1:] if line.startswith(b".") else line)
    message = b"".join(lines) if state == NOMINAL else b""
    return state, message, stream[pos:]


def feed_in(chunks: list[bytes], size_limit: int | None = None):
    reader = DataReader(size_limit, LINE_LIMIT)
    for i, chunk in enumerate(chunks):
        rest = reader.feed(chunk)
        if rest is not None:
            return reader.state, reader.message, rest + b"".join(chunks[i + 1:])
    raise AssertionError("the end was never seen")


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(set(c for c in cuts if 0 < c < len(data)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


CASES = [
    b".\r\n",                                        # empty message: "." as the first line
    b"Subject: a\r\n\r\nbody\r\n.\r\n",
    b"..leading dot\r\n.\r\n",                       # first line stuffed
    b"a\r\n..\r\n...x\r\n. y\r\n.\r\n",              # stuffed lines, one of them just "."
    b"a\r\n.\r\nQUIT\r\n",                           # pipelined command after the end
    b"a\r\n.\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\n",
    b"first\n.\nsecond\r\n.\r\n",                    # smuggling endings are data
    b"first\r.\r\nsecond\r\n.\r\n",
    b"first\r\n.\rsecond\r\n.\r\n",
    b"first\r\n\x00.\r\nsecond\r\n.\r\n",
    b"first\r\n.\n\r\nsecond\r\n.\r\n",
    b"first\r\r\n.\r\r\n.\r\n",
    b"x" * 999 + b"\r\n.\r\n",                       # the longest line aiosmtpd takes
    b"x" * 1000 + b"\r\n.\r\n",                      # one more: 500
    b"ok\r\n" + b"y" * 5000 + b"\r\nmore\r\n.\r\nNOOP\r\n",
]


@pytest.mark.parametrize("stream", CASES)
def test_every_split_matches_aiosmtpd(stream):
    want = reference(stream, None)
    assert feed_in([stream]) == want
    for cut in range(1, len(stream)):  # the end, a CRLF or a stuffed dot cut anywhere
        assert feed_in(split_at(stream, [cut])) == want, cut
    assert feed_in([bytes([b]) for b in stream]) == want


def test_random_messages_and_chunks():
    rnd = random.Random(5321)
    pieces = [b"\r\n", b".", b"..", b"\r", b"\n", b"x", b"word ", b"\x00", b"y" * 400]
    for _ in range(400):
        body = b"".join(rnd.choice(pieces) for _ in range(rnd.randrange(0, 40)))
        stream = body + b"\r\n.\r\n" + rnd.choice([b"", b"QUIT\r\n", b"RSET\r\nNOOP\r\n"])
        limit = rnd.choice([None, 50, 500, 5000])
        want = reference(stream, limit)
        cuts = [rnd.randrange(len(stream)) for _ in range(rnd.randrange(0, 6))]
        assert feed_in(split_at(stream, cuts), limit) == want, (stream, limit, cuts)


def test_size_limit_counts_lines_as_sent():
    stream = b"a" * 98 + b"\r\n" + b".\r\n"  # exactly 100 octets: accepted
    assert feed_in([stream], 100)[0] == NOMINAL
    stream = b"." + b"a" * 98 + b"\r\n" + b".\r\n"  # the stuffed dot counts: 101
    assert feed_in([stream], 100)[0] == TOO_MUCH


def test_first_problem_wins():
    long_then_big = b"y" * 1200 + b"\r\n" + b"z" * 5000 + b"\r\n.\r\n"
    assert feed_in([long_then_big], 3000)[0] == TOO_LONG
    big_then_long = b"z\r\n" * 2000 + b"y" * 1200 + b"\r\n.\r\n"
    assert feed_in([big_then_long], 3000)[0] == TOO_MUCH


def test_refused_data_is_not_kept():
    """Past the size limit nothing more is buffered, however much keeps coming."""
    reader = DataReader(10_000, LINE_LIMIT)
    for _ in range(1000):
        assert reader.feed(b"z" * 998 + b"\r\n") is None
    assert len(reader._buf) < 20_000
    assert reader.feed(b".\r\nQUIT\r\n") == b"QUIT\r\n"
    assert (reader.state, reader.message) == (TOO_MUCH, b"")
