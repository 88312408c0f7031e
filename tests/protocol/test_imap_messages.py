"""FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE, APPEND and CLOSE over a real session."""

from __future__ import annotations

import re

import pytest

from tests.support.imap import Raw, deliver

MULTIPART = (
    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n",
    "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello part one\r\n"
    "--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
    "Content-Disposition: attachment; filename=\"a.bin\"\r\n\r\nAAECAwQ=\r\n--b1--\r\n",
)


@pytest.fixture
def user(mx, request):
    address = f"msg{abs(hash(request.node.name)) % 10**8}@example.test"
    mx.add_user(address)
    deliver(mx, address, "first", "one", "Cc: carol@remote.test\r\n")
    deliver(mx, address, "second ünïcode", "two")
    deliver(mx, address, "third", MULTIPART[1], MULTIPART[0])
    return address


@pytest.fixture
def r(mx, user):
    with Raw(mx) as session:
        session.login(user)
        session.cmd("s", "SELECT INBOX")
        yield session


def test_fetch_index_items(r, mx, user):
    lines, done = r.cmd("a", "FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)")
    assert done.startswith(b"a OK") and len(lines) == 3
    stored = mx.messages(user)
    for i, line in enumerate(lines, 1):
        m = re.match(rb'\* (\d+) FETCH \(UID (\d+) FLAGS \(\) RFC822.SIZE (\d+) INTERNALDATE '
                     rb'"\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d \+0000"\)', line)
        assert m, line
        assert int(m[1]) == i and int(m[2]) == i
        assert int(m[3]) == len(stored[i - 1])  # RFC822.SIZE is the stored CRLF size


def test_fetch_envelope_and_bodystructure(r):
    lines, _ = r.cmd("a", "FETCH 1 ENVELOPE")
    assert lines[0].startswith(b'* 1 FETCH (ENVELOPE ("Sat, 28 Nov 2026 12:00:00 +0000" '
                               b'"first" (("Bob" NIL "bob" "remote.test"))')
    assert b'(("carol" NIL' not in lines[0] and b'((NIL NIL "carol" "remote.test"))' in lines[0]
    lines, _ = r.cmd("b", "FETCH 3 BODYSTRUCTURE")
    assert lines[0].startswith(b'* 3 FETCH (BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "utf-8")')
    assert b'"APPLICATION" "OCTET-STREAM"' in lines[0] and b'"MIXED"' in lines[0]
    again, _ = r.cmd("c", "FETCH 3 BODYSTRUCTURE")  # now from the index's cache
    assert again == lines


def test_body_sections_partial_and_peek(r):
    lines, _ = r.cmd("a", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject From)] FLAGS)")
    assert lines[0] == (b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT FROM)] {47}\r\n"
                        b"From: Bob <bob@remote.test>\r\nSubject: first\r\n\r\n FLAGS ())")
    lines, _ = r.cmd("b", "FETCH 3 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[TEXT]<0.6>)")
    assert b'BODY[1] "Hello part one"' in lines[0]
    assert b"BODY[2.MIME]" in lines[0] and b"Content-Disposition: attachment" in lines[0]
    assert b"BODY[TEXT]<0> {6}\r\n--b1\r\n" in lines[0]
    lines, _ = r.cmd("c", "FETCH 3 (BINARY.PEEK[2] BINARY.SIZE[2])")
    assert b"BINARY[2] ~{5}\r\n\x00\x01\x02\x03\x04" in lines[0]
    assert b"BINARY.SIZE[2] 5" in lines[0]
    assert r.cmd("d", "FETCH 1:3 FLAGS")[0] == [b"* 1 FETCH (FLAGS ())", b"* 2 FETCH (FLAGS ())",
                                                b"* 3 FETCH (FLAGS ())"]
    lines, _ = r.cmd("e", "FETCH 2 BODY[TEXT]")  # not PEEK: marks \Seen and says so
    assert lines[0].startswith(b"* 2 FETCH (BODY[TEXT] {5}\r\ntwo\r\n FLAGS (\\Seen))")


def test_uid_fetch_always_has_uid_and_ignores_missing(r):
    lines, done = r.cmd("a", "UID FETCH 2:99 FLAGS")
    assert lines == [b"* 2 FETCH (UID 2 FLAGS ())", b"* 3 FETCH (UID 3 FLAGS ())"]
    assert r.cmd("b", "UID FETCH 50:60 FLAGS")[0] == []
    assert r.cmd("c", "FETCH 9 FLAGS")[0] == []


def test_store_flags_and_keywords(r):
    lines, _ = r.cmd("a", "STORE 1 +FLAGS (\\Flagged $Junk)")
    assert lines == [b"* 1 FETCH (FLAGS ($Junk \\Flagged))"]
    lines, _ = r.cmd("b", "STORE 1 -FLAGS.SILENT ($Junk)")
    assert lines == []
    lines, _ = r.cmd("c", "UID STORE 1:2 FLAGS (\\Seen \\Answered)")
    assert lines == [b"* 1 FETCH (UID 1 FLAGS (\\Answered \\Seen))",
                     b"* 2 FETCH (UID 2 FLAGS (\\Answered \\Seen))"]
    _, done = r.cmd("d", "STORE 1 +FLAGS (\\Recent)")
    assert done.startswith(b"d BAD")


def test_condstore_unchangedsince_and_changedsince(r):
    lines, _ = r.cmd("a", "FETCH 1 (MODSEQ)")
    modseq = int(re.search(rb"MODSEQ \((\d+)\)", lines[0])[1])
    lines, _ = r.cmd("b", f"STORE 1 (UNCHANGEDSINCE {modseq}) +FLAGS (\\Seen)")
    assert b"MODSEQ (" in lines[0]
    _, done = r.cmd("c", f"STORE 1 (UNCHANGEDSINCE {modseq}) +FLAGS (\\Flagged)")
    assert done.startswith(b"c OK [MODIFIED 1]")
    lines, _ = r.cmd("d", f"FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq})")
    assert len(lines) == 1 and lines[0].startswith(b"* 1 FETCH (FLAGS (\\Seen) MODSEQ (")


def test_search(r):
    r.cmd("x", "STORE 2 +FLAGS (\\Seen $Important)")
    cases = {
        "SEARCH ALL": b"* SEARCH 1 2 3",
        "SEARCH FROM bob": b"* SEARCH 1 2 3",
        "SEARCH SUBJECT second": b"* SEARCH 2",
        "SEARCH UNSEEN": b"* SEARCH 1 3",
        "SEARCH KEYWORD $Important": b"* SEARCH 2",
        "SEARCH OR SUBJECT first SUBJECT third": b"* SEARCH 1 3",
        "SEARCH NOT SUBJECT first": b"* SEARCH 2 3",
        "SEARCH CC carol": b"* SEARCH 1",
        "SEARCH BODY \"part one\"": b"* SEARCH 3",
        "SEARCH SINCE 1-Jan-2020 LARGER 10": b"* SEARCH 1 2 3",
        "UID SEARCH 2:*": b"* SEARCH 2 3",
        "SEARCH HEADER Content-Type multipart": b"* SEARCH 3",
    }
    for i, (command, expected) in enumerate(cases.items()):
        lines, done = r.cmd(f"s{i}", command)
        assert lines == [expected], command
    lines, _ = r.cmd("u", b"SEARCH CHARSET UTF-8 SUBJECT {6+}\r\n\xc3\xbcn\xc3\xafc")
    assert lines == [b"* SEARCH 2"]
    lines, _ = r.cmd("e", "UID SEARCH RETURN (MIN MAX COUNT ALL) ALL")
    assert lines == [b'* ESEARCH (TAG "e") UID MIN 1 MAX 3 ALL 1:3 COUNT 3']
    _, done = r.cmd("f", "SEARCH CHARSET KOI8-R ALL")
    assert b"BADCHARSET" in done


def test_copy_move_expunge(r, mx, user):
    lines, done = r.cmd("a", "COPY 1:2 Archive")
    assert re.match(rb"a OK \[COPYUID \d+ 1:2 1:2\]", done)
    lines, done = r.cmd("b", "MOVE 3 Archive")
    assert re.match(rb"\* OK \[COPYUID \d+ 3 3\]", lines[0]) and b"* 3 EXPUNGE" in lines
    _, done = r.cmd("c", "COPY 1 Nowhere")
    assert done.startswith(b"c NO [TRYCREATE]")
    r.cmd("d", "STORE 1 +FLAGS.SILENT (\\Deleted)")
    lines, _ = r.cmd("e", "EXPUNGE")
    assert lines == [b"* 1 EXPUNGE"]
    lines, _ = r.cmd("f", "FETCH 1:* UID")
    assert lines == [b"* 1 FETCH (UID 2)"]
    r.cmd("g", "STORE 1 +FLAGS.SILENT (\\Deleted)")
    lines, _ = r.cmd("h", "UID EXPUNGE 1")  # UID 1 is already gone: nothing happens
    assert lines == []
    lines, _ = r.cmd("i", "UID EXPUNGE 2")
    assert lines == [b"* 1 EXPUNGE"]
    lines, _ = r.cmd("j", "STATUS Archive (MESSAGES)")
    assert lines == [b"* STATUS Archive (MESSAGES 3)"]


def test_append_and_close(r, mx, user):
    msg = b"From: me@example.test\r\nSubject: appended\r\n\r\nstored by APPEND\r\n"
    lines, done = r.cmd("a", b'APPEND Sent (\\Seen $Draftish) "01-Dec-2026 10:00:00 +0100" {%d+}'
                        b"\r\n" % len(msg) + msg)
    assert re.match(rb"a OK \[APPENDUID \d+ 1\]", done)
    lines, _ = r.cmd("b", 'LIST "" Sent RETURN (STATUS (MESSAGES))')
    assert lines[-1] == b"* STATUS Sent (MESSAGES 1)"
    lines, done = r.cmd("c", b"APPEND INBOX {%d+}\r\n" % len(msg) + msg)
    assert b"* 4 EXISTS" in lines  # the selected mailbox learns of it at once
    lines, _ = r.cmd("d", "FETCH 4 (FLAGS BODY.PEEK[TEXT])")
    assert lines == [b"* 4 FETCH (FLAGS () BODY[TEXT] {18}\r\nstored by APPEND\r\n)"]
    _, done = r.cmd("e", b"APPEND Nowhere {%d+}\r\n" % len(msg) + msg)
    assert done.startswith(b"e NO [TRYCREATE]")
    r.cmd("f", "STORE 1 +FLAGS.SILENT (\\Deleted)")
    lines, done = r.cmd("g", "CLOSE")
    assert lines == [] and done.startswith(b"g OK")  # CLOSE expunges silently
    lines, _ = r.cmd("h", "STATUS INBOX (MESSAGES)")
    assert lines == [b"* STATUS INBOX (MESSAGES 3)"]
    sent = mx.maildir(user, "Sent")
    [key] = sent.keys()
    assert sent.get_bytes(key) == msg


def test_envelope_reads_headers_past_the_first_read_and_files_renamed_meanwhile(r, mx, user):
    # A first FETCH ENVELOPE reads each file's header only (16 KB first), by the path the
    # index had for the whole batch: a header longer than that read, and a file another
    # program renamed after the index looked, must still give the right envelope.
    long = "".join(f"X-Trace-{i}: {'y' * 70}\r\n" for i in range(300))  # ~25 KB
    deliver(mx, user, "long header", "four", long + "Message-ID: <deep@remote.test>\r\n")
    r.cmd("n", "NOOP")
    cur = mx.maildir(user)._path + "/cur"
    import os

    for name in os.listdir(cur):
        if "," in name and name.endswith(":2,"):
            os.rename(f"{cur}/{name}", f"{cur}/{name}F")  # flagged by another program
    lines, done = r.cmd("a", "FETCH 1:4 ENVELOPE")
    lines = [line for line in lines if b"ENVELOPE" in line]  # flag news may follow
    assert done.startswith(b"a OK") and len(lines) == 4, (lines, done)
    assert b'"first"' in lines[0] and b'"third"' in lines[2]
    assert b'"long header"' in lines[3] and b'"<deep@remote.test>"' in lines[3]


def test_a_message_renamed_before_its_date_was_read_is_still_fetched(r, mx, user):
    # The index reads a message's internal date when first asked. A FETCH of one message
    # runs on the event loop without syncing; a file another program renamed since the
    # last sync sends it to a worker thread, which finds it: never NO [EXPUNGEISSUED].
    import os

    deliver(mx, user, "renamed before its date", "five", "")
    lines, _ = r.cmd("n", "NOOP")
    exists = max(int(x.split()[1]) for x in lines if x.endswith(b"EXISTS"))
    cur = mx.maildir(user)._path + "/cur"
    name = max(os.listdir(cur), key=lambda n: os.stat(f"{cur}/{n}").st_mtime_ns)
    os.utime(f"{cur}/{name}", (1_700_000_000, 1_700_000_000))
    os.rename(f"{cur}/{name}", f"{cur}/{name.partition(':')[0]}:2,F")
    lines, done = r.cmd("a", f"FETCH {exists} (INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert done.startswith(b"a OK"), (lines, done)
    assert any(b'INTERNALDATE "14-Nov-2023 22:13:20 +0000"' in x for x in lines), lines


def test_a_message_renamed_after_its_date_was_read_is_still_opened(r, mx, user):
    # Opening a message reads no date and checks no file before reading it: a file another
    # program renamed meanwhile fails that read, and a worker thread finds it by a sync.
    import os

    deliver(mx, user, "renamed after its date", "six", "")
    lines, _ = r.cmd("n", "NOOP")
    exists = max(int(x.split()[1]) for x in lines if x.endswith(b"EXISTS"))
    lines, _ = r.cmd("d", f"FETCH {exists} (INTERNALDATE)")  # the date is read and stored
    cur = mx.maildir(user)._path + "/cur"
    name = max(os.listdir(cur), key=lambda n: os.stat(f"{cur}/{n}").st_mtime_ns)
    os.rename(f"{cur}/{name}", f"{cur}/{name.partition(':')[0]}:2,F")
    lines, done = r.cmd("a", f"FETCH {exists} (BODY.PEEK[])")
    assert done.startswith(b"a OK"), (lines, done)
    assert any(b"renamed after its date" in x for x in lines), lines


def test_a_few_small_messages_and_a_big_one_read_the_same(r, mx, user):
    # A FETCH of a few small messages is served on the event loop, bigger ones in a worker
    # thread: both must send the stored bytes, and the news that follows.
    deliver(mx, user, "big", "z" * 76 + "\r\n" + ("y" * 78 + "\r\n") * 4000)  # ~320 KB
    r.cmd("n", "NOOP")
    stored = mx.messages(user)
    for seq in (1, 4):
        lines, done = r.cmd("a", f"FETCH {seq} (BODY.PEEK[] RFC822.SIZE)")
        assert done.startswith(b"a OK"), done
        body = stored[seq - 1]
        assert lines[0].startswith(b"* %d FETCH (BODY[] {%d}\r\n" % (seq, len(body)))
        assert body in lines[0] and b"RFC822.SIZE %d)" % len(body) in lines[0]
    lines, done = r.cmd("b", "FETCH 1:3 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert [b"Subject: " + s in line for line, s in zip(lines, (b"first", b"second", b"third"),
                                                        strict=True)] == [True] * 3
    deliver(mx, user, "fifth", "five")
    lines, done = r.cmd("c", "FETCH 2 (BODY.PEEK[TEXT])")
    assert b"* 5 EXISTS" in lines and done.startswith(b"c OK")


def test_a_first_envelope_and_bodystructure_of_many_messages(fresh):
    # Enough messages for the parse helpers (where the machine has two CPUs, as "auto"
    # then starts them): every answer must be what this process computes from the file.
    from server.imap import fetch, parsepool

    n = parsepool.MIN_BATCH + 16
    fresh.append_config(f"[imap]\nparse_workers_from = {n}\n")
    mx = fresh.start()
    address = "many@example.test"
    mx.add_user(address)
    with mx.smtp() as client:
        for i in range(n):
            client.sendmail("bob@remote.test", [address],
                            (f"From: Bob {i} <bob@remote.test>\r\nTo: {address}\r\n"
                             f"Subject: number {i}\r\nMessage-ID: <{i}@remote.test>\r\n"
                             f"\r\nbody {i}\r\n").encode())
    stored = mx.messages(address)
    with Raw(mx) as session:
        session.login(address)
        session.cmd("s", "SELECT INBOX")
        for item, kind in (("ENVELOPE", "envelope"), ("BODYSTRUCTURE", "bodystructure")):
            lines, done = session.cmd("f", f"FETCH 1:* ({item})")
            assert done.startswith(b"f OK") and len(lines) == n
            # Messages delivered in the same mtime tick get UIDs in name order, which need
            # not be the order mx.messages() gives: compare the values as a whole.
            got = []
            for seq, line in enumerate(lines, 1):
                prefix = b"* %d FETCH (%s " % (seq, item.encode())
                assert line.startswith(prefix) and line.endswith(b")"), line
                got.append(line[len(prefix):-1])
            want = [fetch.compute_cached(kind, fetch.crlf(message)) for message in stored]
            assert sorted(got) == sorted(want)
    if parsepool_started(mx) is None:
        return  # a single-CPU machine: "auto" starts no helpers
    assert parsepool_started(mx), "the parse helpers were not used"


def parsepool_started(mx) -> bool | None:
    """Whether the daemon has forked its parse helpers (None: it would have none)."""
    import os

    if (os.cpu_count() or 1) < 2:
        return None
    children = []
    for task in os.listdir(f"/proc/{mx.proc.pid}/task"):  # the thread that forked counts
        with open(f"/proc/{mx.proc.pid}/task/{task}/children") as f:
            children += f.read().split()
    for child in children:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"forkserver" in f.read():
                return True
    return False


def test_a_message_deleted_by_another_program_during_a_fetch_is_expungeissued(r, mx, user):
    # RFC 9051 §7.1: EXPUNGEISSUED when a message asked for has gone; the others are sent.
    import os

    cur = mx.maildir(user)._path + "/cur"
    from pathlib import Path

    second = next(n for n in os.listdir(cur)
                  if b"Subject: second" in Path(cur, n).read_bytes())
    os.unlink(f"{cur}/{second}")
    for tag, what in (("a", "ENVELOPE"), ("b", "BODY.PEEK[HEADER]")):
        lines, done = r.cmd(tag, f"FETCH 2:3 ({what})")
        assert done.startswith(tag.encode() + b" NO [EXPUNGEISSUED]"), (what, done)
        fetched = [line for line in lines if what.split(".")[0].encode() in line]
        assert len(fetched) == 1 and fetched[0].startswith(b"* 3 FETCH"), (what, lines)
    lines, done = r.cmd("c", "NOOP")
    assert b"* 2 EXPUNGE" in lines and done.startswith(b"c OK")


def test_pipelined_commands_are_answered_in_order_and_all_of_them(r, mx, user):
    # Responses to a command whose successor is already here are held and sent with the
    # next ones (one TLS record for a run of mbsync's one-message FETCHes): every answer must
    # still come, in order, including the last, which nothing follows.
    stored = mx.messages(user)
    r.send("a FETCH 1 (BODY.PEEK[])\r\nb FETCH 2 (BODY.PEEK[])\r\nc NOOP\r\n"
           "d FETCH 1 (FLAGS)\r\n")
    seen, lines = [], []
    while len(seen) < 4:
        line = r.line()
        lines.append(line)
        if line[:1] in b"abcd" and line[1:5] == b" OK ":
            seen.append(line[:1])
    assert seen == [b"a", b"b", b"c", b"d"]
    text = b"\r\n".join(lines)
    assert stored[0] in text and stored[1] in text
    assert text.index(stored[0]) < text.index(b"a OK") < text.index(stored[1])


def test_a_pipelined_logout_still_sends_everything_before_it(r):
    r.send("a NOOP\r\nb LOGOUT\r\n")
    lines = r.lines_until_closed()
    assert lines[0].startswith(b"a OK") and lines[1].startswith(b"* BYE")
    assert lines[2].startswith(b"b OK") and len(lines) == 3


def test_news_for_a_pipelined_run_comes_with_its_last_command(r, mx, user):
    # Another session flags message 1. Of two FETCHes sent together, the first is answered
    # without looking for changes (its successor was already here); the second looks, so
    # the news arrives before the run's end, and never gets lost.
    with Raw(mx) as other:
        other.login(user)
        other.cmd("s", "SELECT INBOX")
        assert other.cmd("f", "STORE 1 +FLAGS (\\Flagged)")[1].startswith(b"f OK")
    r.send("a FETCH 2 (UID)\r\nb FETCH 3 (UID)\r\n")
    lines = []
    while not lines or not lines[-1].startswith(b"b OK"):
        lines.append(r.line())
    news = next(i for i, line in enumerate(lines) if b"FLAGS (\\Flagged)" in line)
    done_a = next(i for i, line in enumerate(lines) if line.startswith(b"a OK"))
    assert done_a < news < len(lines) - 1
    # Alone (nothing pipelined behind it), a command brings the news itself.
    with Raw(mx) as other:
        other.login(user)
        other.cmd("s", "SELECT INBOX")
        other.cmd("f", "STORE 2 +FLAGS (\\Flagged)")
    lines, done = r.cmd("c", "FETCH 3 (UID)")
    assert any(b"FLAGS (\\Flagged)" in line for line in lines) and done.startswith(b"c OK")


def test_a_run_of_one_message_fetches_still_carries_every_change_made_elsewhere(r, mx, user):
    # The check after each command skips SQLite while nothing was committed (index_quick):
    # what another session stores or expunges, another program renames and mail delivered
    # meanwhile must still reach a client opening one message after another; an expunge
    # waits for a command that may announce it (RFC 3501 §7.4.1).
    import os
    from pathlib import Path

    def opened(tag: str, seq: int) -> list[bytes]:
        lines, done = r.cmd(tag, f"FETCH {seq} (BODY.PEEK[])")
        assert done.startswith(tag.encode() + b" OK"), (lines, done)
        return lines

    opened("a", 1)
    with Raw(mx) as other:
        other.login(user)
        other.cmd("s", "SELECT INBOX")
        other.cmd("t", "STORE 2 +FLAGS (\\Flagged)")
        assert b"* 2 FETCH (FLAGS (\\Flagged))" in opened("b", 1)
        deliver(mx, user, "fourth", "four")
        assert b"* 4 EXISTS" in opened("c", 3)
        cur = mx.maildir(user)._path + "/cur"
        first = next(n for n in os.listdir(cur)
                     if b"Subject: first" in Path(cur, n).read_bytes())
        os.rename(f"{cur}/{first}", f"{cur}/{first.partition(':')[0]}:2,S")
        lines = opened("d", 1)  # renamed after the index read its name: found again
        assert any(b"Subject: first" in x for x in lines), lines
        lines += opened("e", 2)
        assert any(b"* 1 FETCH (FLAGS (\\Seen))" in x for x in lines), lines
        other.cmd("u", "STORE 3 +FLAGS.SILENT (\\Deleted)")
        other.cmd("v", "EXPUNGE")
    lines = opened("f", 1)
    assert b"* 3 EXPUNGE" not in lines and any(b"Subject: first" in x for x in lines)
    lines, done = r.cmd("g", "NOOP")
    assert b"* 3 EXPUNGE" in lines and done.startswith(b"g OK")
