"""Push and concurrency: IDLE (RFC 2177), sessions seeing each other's changes, deliveries
from the MX, changes by other Maildir writers, and UIDs that survive restarts."""

from __future__ import annotations

import asyncio
import os
import time

import aioimaplib
import pytest

from tests.support.imap import PASSWORD, Raw, deliver


@pytest.fixture
def user(mx, request):
    address = f"idle{abs(hash(request.node.name)) % 10**8}@example.test"
    mx.add_user(address)
    deliver(mx, address, "existing")
    return address


def selected(mx, user) -> Raw:
    r = Raw(mx)
    r.login(user)
    r.cmd("s", "SELECT INBOX")
    return r


def test_idle_hears_a_delivery_within_a_second(mx, user):
    with selected(mx, user) as a:
        a.send("i IDLE\r\n")
        assert a.line() == b"+ idling"
        started = time.monotonic()
        deliver(mx, user, "pushed")
        assert a.line() == b"* 2 EXISTS"
        assert time.monotonic() - started < 1.0
        a.send("DONE\r\n")
        _, done = a.until("i")
        assert done == b"i OK IDLE terminated"


def test_sessions_see_each_others_flags_and_expunges(mx, user):
    deliver(mx, user, "second")
    with selected(mx, user) as a, selected(mx, user) as b:
        a.send("i IDLE\r\n")
        a.line()
        b.cmd("1", "STORE 1 +FLAGS (\\Flagged)")
        assert a.line() == b"* 1 FETCH (FLAGS (\\Flagged))"
        b.cmd("2", "STORE 2 +FLAGS.SILENT (\\Deleted)")
        assert a.line() == b"* 2 FETCH (FLAGS (\\Deleted))"
        b.cmd("3", "EXPUNGE")
        assert a.line() == b"* 2 EXPUNGE"
        a.send("DONE\r\n")
        a.until("i")
        lines, _ = a.cmd("f", "FETCH 1:* UID")
        assert lines == [b"* 1 FETCH (UID 1)"]


def test_expunge_waits_during_fetch(mx, user):
    deliver(mx, user, "second")
    with selected(mx, user) as a, selected(mx, user) as b:
        b.cmd("1", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        b.cmd("2", "EXPUNGE")
        lines, _ = a.cmd("f", "FETCH 2 UID")  # numbers must not change under a FETCH
        assert lines[0] == b"* 2 FETCH (UID 2)" and not any(b"EXPUNGE" in x for x in lines)
        lines, _ = a.cmd("n", "NOOP")
        assert b"* 1 EXPUNGE" in lines


def test_other_maildir_writers_are_picked_up(mx, user):
    maildir = mx.data_dir / "mail" / "example.test" / user.split("@")[0]
    with selected(mx, user) as a:
        [path] = list((maildir / "cur").iterdir()) or list((maildir / "new").iterdir())
        # What mutt does when you flag a message: rename to new flags.
        base = path.name.split(":2,")[0]
        os.rename(path, maildir / "cur" / f"{base}:2,FS")
        time.sleep(0.01)
        lines, _ = a.cmd("n", "NOOP")
        assert b"* 1 FETCH (FLAGS (\\Flagged \\Seen))" in lines
        os.unlink(maildir / "cur" / f"{base}:2,FS")
        lines, _ = a.cmd("m", "NOOP")
        assert b"* 1 EXPUNGE" in lines


def test_uids_survive_restart_and_index_loss(fresh):
    fresh.add_user("keep@example.test")
    fresh.start()
    for n in range(3):
        deliver(fresh, "keep@example.test", f"m{n}")
    with selected(fresh, "keep@example.test") as r:
        r.cmd("a", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        r.cmd("b", "EXPUNGE")
        before, _ = r.cmd("c", "FETCH 1:* (UID FLAGS)")
        status_before, _ = r.cmd("d", "STATUS INBOX (UIDVALIDITY UIDNEXT)")
    fresh.stop()
    (fresh.data_dir / "mail" / "example.test" / "keep" / "mailstead-index.sqlite3").unlink()
    fresh.start()
    with selected(fresh, "keep@example.test") as r:
        after, _ = r.cmd("c", "FETCH 1:* (UID FLAGS)")
        status_after, _ = r.cmd("d", "STATUS INBOX (UIDVALIDITY UIDNEXT)")
    assert after == before and [b"UID 2" in before[0], b"UID 3" in before[1]] == [True, True]
    assert status_after == status_before


def test_aioimaplib_idle(mx, user):
    async def scenario():
        client = aioimaplib.IMAP4_SSL("127.0.0.1", mx.ports["imaps"],
                                      ssl_context=mx.tls_context())
        await client.wait_hello_from_server()
        assert (await client.login(user, PASSWORD)).result == "OK"
        assert (await client.select("INBOX")).result == "OK"
        idle = await client.idle_start(timeout=10)
        await asyncio.get_running_loop().run_in_executor(None, deliver, mx, user, "aio push")
        pushed = await client.wait_server_push()
        client.idle_done()
        await asyncio.wait_for(idle, 10)
        await client.logout()
        return pushed

    pushed = asyncio.run(scenario())
    assert any(b"EXISTS" in (line if isinstance(line, bytes) else str(line).encode())
               for line in pushed)


def test_recent_goes_to_one_session(mx, user):
    with selected(mx, user) as a:
        deliver(mx, user, "new one")
        lines, _ = a.cmd("n", "NOOP")
        assert lines == [b"* 2 EXISTS", b"* 1 RECENT"]
        assert a.cmd("f", "FETCH 2 FLAGS")[0] == [b"* 2 FETCH (FLAGS (\\Recent))"]
        assert a.cmd("s", "SEARCH RECENT")[0] == [b"* SEARCH 2"]
        assert a.cmd("t", "SEARCH NEW")[0] == [b"* SEARCH 2"]
        with selected(mx, user) as b:  # RFC 3501 §2.3.2: only one session has it
            assert b.cmd("f", "FETCH 2 FLAGS")[0] == [b"* 2 FETCH (FLAGS ())"]
            assert b.cmd("s", "SEARCH RECENT")[0] == [b"* SEARCH"]


def test_idle_hears_other_programs_without_polling(mx, user):
    """inotify: a flag set by mutt (a rename in cur/) reaches an idling client at once."""
    maildir = mx.data_dir / "mail" / "example.test" / user.split("@")[0]
    with selected(mx, user) as a:
        a.send("i IDLE\r\n")
        assert a.line() == b"+ idling"
        [path] = list((maildir / "cur").iterdir())
        started = time.monotonic()
        os.rename(path, maildir / "cur" / (path.name.split(":2,")[0] + ":2,F"))
        assert a.line() == b"* 1 FETCH (FLAGS (\\Flagged))"
        assert time.monotonic() - started < 2  # the no-inotify fallback would take 10 s
        a.send("DONE\r\n")
        a.until("i")
