"""STORE on thousands of messages over real sessions: the server answers once the files are
renamed and writes the index rows after (maildir.index_ops.WRITE_BEHIND_ROWS); no reader,
the storing session included, may see the flags from before the answer."""

from __future__ import annotations

import re

from maildir import index_ops
from tests.support.imap import Raw, fill_cur

N = index_ops.WRITE_BEHIND_ROWS + 50


def fetched_seen(lines: list[bytes]) -> set[int]:
    return {int(m[1]) for line in lines
            if (m := re.match(rb"\* (\d+) FETCH \(FLAGS \(\\Seen\)", line))}


def test_every_reader_sees_a_big_store_once_it_is_answered(mx):
    address = "bigstore@example.test"
    fill_cur(mx, address, N)
    with Raw(mx) as one, Raw(mx) as two, Raw(mx) as three:
        for session in (one, two, three):
            session.login(address)
        _, done = one.cmd("s", "SELECT INBOX (CONDSTORE)")
        assert done.startswith(b"s OK")
        two.cmd("s", "SELECT INBOX")
        lines, done = one.cmd("a", "STORE 1:* +FLAGS (\\Seen)")
        assert done.startswith(b"a OK") and len(lines) == N
        modseq = int(re.search(rb"MODSEQ \((\d+)\)", lines[0])[1])
        # Straight after the answer, from three sessions at once: the other one is told
        # of every change (its SEARCH would answer from what it has been told so far, as
        # RFC 3501 §7.4.1 has it, so NOOP); a STATUS reads the index.
        two.send("b NOOP\r\n")
        three.send("c STATUS INBOX (UNSEEN HIGHESTMODSEQ)\r\n")
        one.send("d SEARCH UNSEEN\r\n")
        lines_b, _ = two.until("b")
        lines_c, _ = three.until("c")
        lines_d, _ = one.until("d")
        assert fetched_seen(lines_b) == set(range(1, N + 1))
        assert lines_c == [b"* STATUS INBOX (UNSEEN 0 HIGHESTMODSEQ %d)" % modseq]
        assert lines_d == [b"* SEARCH"]
        lines, _ = three.cmd("e", "SELECT INBOX")
        assert not any(line.startswith(b"* OK [UNSEEN") for line in lines)
        assert three.cmd("f", "SEARCH UNSEEN")[0] == [b"* SEARCH"]
        lines, _ = one.cmd("g", "STATUS INBOX (HIGHESTMODSEQ)")
        assert lines[-1] == b"* STATUS INBOX (HIGHESTMODSEQ %d)" % modseq


def test_an_idling_session_hears_every_change_of_a_big_store(mx):
    address = "bigidle@example.test"
    fill_cur(mx, address, N)
    with Raw(mx) as one, Raw(mx) as two:
        for session in (one, two):
            session.login(address)
            session.cmd("s", "SELECT INBOX")
        two.send("i IDLE\r\n")
        assert two.line() == b"+ idling"
        lines, done = one.cmd("a", "STORE 1:* +FLAGS.SILENT (\\Flagged)")
        assert done.startswith(b"a OK") and lines == []
        heard = [two.line() for _ in range(N)]
        assert heard == [b"* %d FETCH (FLAGS (\\Flagged))" % i for i in range(1, N + 1)]
        two.send("DONE\r\n")
        assert two.until("i")[1] == b"i OK IDLE terminated"
        # The storing session's next command finds its own change in the index.
        assert one.cmd("b", "SEARCH UNFLAGGED")[0] == [b"* SEARCH"]
