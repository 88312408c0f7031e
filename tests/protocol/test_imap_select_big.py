"""The first SELECT of a folder of thousands answers before the index rows are written
(maildir.index_sync.WRITE_BEHIND_ROWS): what it says must be what the index says once they
are in, and every reader, the selecting session included, must see them."""

from __future__ import annotations

import re

from maildir import index_sync
from tests.support.imap import Raw, fill_cur

N = index_sync.WRITE_BEHIND_ROWS + 50

CODES = (b"EXISTS", b"UNSEEN", b"UIDVALIDITY", b"UIDNEXT", b"HIGHESTMODSEQ", b"FLAGS")


def select_facts(lines: list[bytes]) -> dict[bytes, bytes]:
    facts = {}
    for line in lines:
        for code in CODES:
            if re.match(rb"\* (OK \[)?(\d+ )?" + code + rb"\b", line):
                facts[code] = line
    return facts


def test_a_first_select_of_thousands_answers_what_the_index_then_says(mx):
    address = "bigselect@example.test"
    fill_cur(mx, address, N)
    with Raw(mx) as one, Raw(mx) as two, Raw(mx) as three:
        for session in (one, two, three):
            session.login(address)
        lines, done = one.cmd("s", "SELECT INBOX (CONDSTORE)")
        assert done.startswith(b"s OK [READ-WRITE]")
        first = select_facts(lines)
        assert first[b"EXISTS"] == b"* %d EXISTS" % N
        assert first[b"UNSEEN"].startswith(b"* OK [UNSEEN 1]")
        assert first[b"UIDNEXT"].startswith(b"* OK [UIDNEXT %d]" % (N + 1))
        # Straight after the answer, while the rows may still be going in: a second
        # session's SELECT and a STATUS read the index, the first session its own view
        # and then the index (SEARCH).
        two.send("t SELECT INBOX (CONDSTORE)\r\n")
        three.send("u STATUS INBOX (MESSAGES UNSEEN UIDNEXT HIGHESTMODSEQ)\r\n")
        one.send("a UID FETCH 1:* (UID FLAGS)\r\nb SEARCH UNSEEN\r\n")
        lines_t, done_t = two.until("t")
        lines_u, _ = three.until("u")
        lines_a, _ = one.until("a")
        lines_b, _ = one.until("b")
        assert done_t.startswith(b"t OK")
        assert select_facts(lines_t) == first
        modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", first[b"HIGHESTMODSEQ"])[1])
        assert lines_u == [b"* STATUS INBOX (MESSAGES %d UNSEEN %d UIDNEXT %d HIGHESTMODSEQ %d)"
                           % (N, N, N + 1, modseq)]
        assert len(lines_a) == N and lines_a[-1] == \
            b"* %d FETCH (UID %d FLAGS ())" % (N, N)
        assert lines_b == [b"* SEARCH " + b" ".join(b"%d" % i for i in range(1, N + 1))]
    mx.wait_for_log("first index rows of INBOX written")
