"""maildir.index: UIDs, MODSEQs and flags over real Maildirs, with other writers at work."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from maildir import Delivery, create_maildir, deliver, parse_name, quota
from maildir.flags import set_flags
from maildir.index import MailboxIndex, MessageGone
from maildir.index_sql import DB_NAME
from maildir.index_state import split_name
from maildir.keywords import imap_flags, join_keywords, parse_flags
from maildir.uidlist import UIDLIST_NAME

SEEN, FLAGGED, DELETED = "\\Seen", "\\Flagged", "\\Deleted"


def _body(i: int) -> bytes:
    return b"From: bob@example.net\r\nSubject: message %d\r\n\r\nbody\r\n" % i


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "alice"
    create_maildir(root, folders=("Sent", "Lists.python"))
    return root


@pytest.fixture
def index(root):
    with MailboxIndex(root) as mi:
        yield mi


def deliver_n(folder: Path, n: int, start: int = 0) -> list[Path]:
    return [deliver([Delivery(folder, [_body(start + i)])])[0] for i in range(n)]


def settle(fi) -> None:
    """Make the folder look quiet: directory mtimes a minute old, recorded as proven.

    Afterwards any change another program makes shows as a new mtime at once, whatever the
    clock granularity, so tests of other writers do not depend on timing.
    """
    fi.sync(full=True)
    old = time.time() - 60
    for sub in ("new", "cur"):
        os.utime(fi.directory / sub, (old, old))
    fi.sync(full=True)


def cur_name(fi, uid: int) -> str:
    path = fi.path(uid)
    assert path.parent.name == "cur"
    return path.name


def drop_index(root: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(root / (DB_NAME + suffix))
        except FileNotFoundError:
            pass


def snapshot(fi) -> dict[int, frozenset[str]]:
    return {m.uid: m.flags for m in fi.messages()}


# -- building and reading ---------------------------------------------------------------------


def test_internal_dates_are_read_when_asked_and_stored_off_the_event_loop(root, index):
    for path, when in zip(deliver_n(root, 3), (3000, 1000, 2000), strict=True):
        os.utime(path, (when, when))
    inbox = index.folder("INBOX")

    def stored_dates():
        with sqlite3.connect(root / DB_NAME) as db:
            return [d for (d,) in db.execute("SELECT internal_date FROM messages ORDER BY uid")]

    infos, paths = inbox.located([1, 2])  # a FETCH on the event loop: not written
    assert [infos[u].internal_date for u in (1, 2)] == [3000, 1000]
    assert stored_dates() == [None, None, None]
    assert inbox.get(2).internal_date == 1000
    assert stored_dates() == [None, 1000, None]
    changes = inbox.changes_since(0)  # a poll wants flags: dates as the index has them
    assert [m.internal_date for m in changes.messages] == [None, 1000, None]
    assert [m.internal_date for m in inbox.messages(dates=False)] == [None, 1000, None]
    assert inbox.get_many([1, 2], dates=False)[1].internal_date is None
    assert {u: m.internal_date for u, m in inbox.get_many([1, 3]).items()} == {1: 3000, 3: 2000}
    assert stored_dates() == [3000, 1000, 2000]


def test_located_leaves_out_a_file_renamed_since_the_sync_without_syncing(root, index):
    paths = deliver_n(root, 2)
    inbox = index.folder("INBOX")
    moved = paths[1].parent.parent / "cur" / (paths[1].name.partition(":")[0] + ":2,S")
    os.rename(inbox.paths([2])[2], moved)  # another program marks it \Seen

    def indexed_name():
        with sqlite3.connect(root / DB_NAME) as db:
            return db.execute("SELECT name FROM messages WHERE uid = 2").fetchone()[0]

    before = indexed_name()
    infos, _ = inbox.located([1, 2])  # on the event loop: no sync, no write lock
    assert sorted(infos) == [1]
    assert indexed_name() == before != moved.name  # nothing synced
    # Without dates (a client opening a message) no file is looked at: the read finds out.
    infos, paths = inbox.located([1, 2], dates=False)
    assert sorted(infos) == [1, 2] and infos[2].internal_date is None
    assert not os.path.exists(paths[2]) and indexed_name() == before
    assert inbox.get_many([2])[2].internal_date is not None  # in a thread: found by a sync
    assert indexed_name() == moved.name


def test_first_sync_indexes_in_delivery_order_and_moves_new_to_cur(root, index):
    paths = deliver_n(root, 3)
    for path, when in zip(paths, (3000, 1000, 2000), strict=True):
        os.utime(path, (when, when))  # mtimes that disagree with the names
    inbox = index.folder("INBOX")
    assert os.listdir(root / "new") == []
    # UIDs in the order of the delivery times in the names, as Dovecot gives them; the
    # internal dates are the mtimes, read when first asked for.
    with sqlite3.connect(root / DB_NAME) as db:
        assert db.execute("SELECT internal_date FROM messages").fetchall() == [(None,)] * 3
    messages = inbox.messages()
    assert [m.uid for m in messages] == [1, 2, 3]
    assert [m.internal_date for m in messages] == [3000, 1000, 2000]
    assert [inbox.read(m.uid) for m in messages] == [_body(0), _body(1), _body(2)]
    assert all(m.size == len(_body(0)) and m.flags == frozenset() for m in messages)
    with sqlite3.connect(root / DB_NAME) as db:
        assert db.execute("SELECT internal_date FROM messages").fetchall() == [
            (3000,), (1000,), (2000,)]
    assert all(cur_name(inbox, m.uid).endswith(":2,") for m in messages)
    assert inbox.uidnext == 4
    assert index.folder("inbox") is inbox  # RFC 3501 §5.1: INBOX in any case


def test_status_counts(root, index):
    deliver_n(root, 4)
    inbox = index.folder("INBOX")
    inbox.store_flags([1, 3], {SEEN}, "add")
    status = inbox.status()
    assert (status.messages, status.unseen, status.first_unseen) == (4, 2, 2)
    assert status.size == inbox.total_size == 4 * len(_body(0))
    assert (inbox.count, inbox.unseen_count, inbox.first_unseen) == (4, 2, 2)
    assert status.uidvalidity == inbox.uidvalidity and status.uidnext == 5
    assert status.highestmodseq == inbox.highestmodseq


def test_get_many(root, index):
    deliver_n(root, 3)
    inbox = index.folder("INBOX")
    inbox.expunge([2])
    found = inbox.get_many([3, 2, 1, 40])
    assert sorted(found) == [1, 3] and found[3] == inbox.get(3)


def test_folders_by_name(root, index):
    deliver_n(root / ".Lists.python", 1)
    assert [m.uid for m in index.folder("Lists.python").messages()] == [1]
    with pytest.raises(FileNotFoundError):
        index.folder("Nope")
    with pytest.raises(ValueError):
        index.folder("../etc")


def test_an_unchanged_folder_is_not_listed(root, index):
    deliver_n(root, 2)
    inbox = index.folder("INBOX")
    settle(inbox)
    recorded = os.stat(root / "cur").st_mtime_ns
    # Slip a file in and put the mtime back: only a sync that lists cur/ can see it.
    (root / "cur" / "1.M1P1Q1R1.sneaky:2,S").write_bytes(_body(9))
    os.utime(root / "cur", ns=(recorded, recorded))
    assert not inbox.sync()
    assert inbox.count == 2
    assert inbox.sync(full=True).added == [3]


def test_unindexable_and_dot_names_are_left_alone(root, index):
    deliver_n(root, 1)
    (root / "cur" / "bad\nname:2,").write_bytes(b"x")
    (root / "cur" / ".hidden").write_bytes(b"x")
    (root / "cur" / "adir").mkdir()
    inbox = index.folder("INBOX")
    assert inbox.uids() == [1]


_NAME_PARTS = st.sampled_from(
    [
        "1700000000.M1P2Q3R4.mx",
        ",S=",
        ",W=",
        ":2,",
        ":1,",
        ",",
        ":",
        "0",
        "12",
        "007",
        "S",
        "aF",
        "x y",
        "é",
    ]
)


@given(st.lists(_NAME_PARTS, min_size=1, max_size=8).map("".join) | st.text(min_size=1))
def test_the_fast_name_split_agrees_with_parse_name(name):
    assume(name not in (".", "..") and "/" not in name and "\0" not in name)
    parsed = parse_name(name)
    assert split_name(name) == (parsed.base, parsed.size, parsed.vsize, parsed.flags)


def test_imap_flags_round_trip():
    flags = {SEEN, "\\Answered", FLAGGED, DELETED, "\\Draft", "$Forwarded", "Junk"}
    bits, keywords = parse_flags({f.upper() if f.startswith("\\") else f for f in flags})
    assert imap_flags(bits, join_keywords(keywords)) == flags


# -- other writers ----------------------------------------------------------------------------


def test_deliveries_are_picked_up_at_once(root, index):
    inbox = index.folder("INBOX")
    for i in range(10):  # no settling: each delivery lands right after a sync
        deliver_n(root, 1, start=i)
        assert inbox.sync().added == [i + 1]
    assert inbox.uids() == list(range(1, 11))
    assert os.listdir(root / "new") == []


def test_flag_change_by_another_program_bumps_modseq(root, index):
    deliver_n(root, 2)
    inbox = index.folder("INBOX")
    settle(inbox)
    before = inbox.highestmodseq
    set_flags(root, cur_name(inbox, 2), "FS")  # what mutt does
    result = inbox.sync()
    assert (result.added, result.expunged, result.changed) == ([], [], [2])
    message = inbox.get(2)
    assert message.flags == {SEEN, FLAGGED}
    assert message.modseq > before == inbox.get(1).modseq
    assert [m.uid for m in inbox.changes_since(before).messages] == [2]


def test_delete_by_another_program_is_an_expunge(root, index):
    deliver_n(root, 3)
    inbox = index.folder("INBOX")
    settle(inbox)
    before = inbox.highestmodseq
    os.unlink(inbox.path(2))
    assert inbox.sync().expunged == [2]
    assert inbox.get(2) is None and inbox.uids() == [1, 3]
    changes = inbox.changes_since(before)
    assert changes.expunged == [2] and changes.messages == []
    assert changes.highestmodseq > before
    with pytest.raises(MessageGone):
        inbox.read(2)


def test_message_moved_to_cur_by_another_program_before_we_saw_it(root, index):
    inbox = index.folder("INBOX")
    [path] = deliver_n(root, 1)
    os.rename(path, root / "cur" / (path.name + ":2,S"))
    assert inbox.sync().added == [1]
    assert inbox.get(1).flags == {SEEN}


def test_open_follows_a_rename_made_behind_our_back(root, index):
    deliver_n(root, 1)
    inbox = index.folder("INBOX")
    set_flags(root, cur_name(inbox, 1), "S")
    assert inbox.read(1) == _body(0)  # found again by one full sync
    assert inbox.get(1).flags == {SEEN}


def test_a_hard_linked_duplicate_gets_its_own_name_and_uid(root, index):
    deliver_n(root, 1)
    inbox = index.folder("INBOX")
    settle(inbox)
    name = cur_name(inbox, 1)
    os.link(root / "cur" / name, root / "cur" / (name[:-1] + "F"))  # same base, flagged
    assert inbox.sync().added == [2]
    bases = {parse_name(n).base for n in os.listdir(root / "cur")}
    assert len(bases) == 2
    assert {m.uid for m in inbox.messages()} == {1, 2}


def test_same_tick_change_in_cur_shows_within_the_dirty_window(root):
    with MailboxIndex(root, dirty_window=0.3) as mi:
        deliver_n(root, 1)
        inbox = mi.folder("INBOX")  # moves new/ -> cur/: cur/ trusted until +0.3 s
        recorded = os.stat(root / "cur").st_mtime_ns
        set_flags(root, cur_name(inbox, 1), "S")
        os.utime(root / "cur", ns=(recorded, recorded))  # as if in the same clock tick
        assert not inbox.sync()
        time.sleep(0.35)
        assert inbox.sync().changed == [1]


def test_two_indexes_on_one_store_see_each_other(root):
    deliver_n(root, 2)
    with MailboxIndex(root) as one, MailboxIndex(root) as two:
        a, b = one.folder("INBOX"), two.folder("INBOX")
        mark = b.highestmodseq
        a.store_flags([1], {SEEN}, "add")
        assert [m.uid for m in b.changes_since(mark).messages] == [1]
        deliver_n(root, 1, start=5)
        assert b.sync().added == [3]
        assert a.uids() == [1, 2, 3]  # same database: no sync needed to see it


# -- persistence ------------------------------------------------------------------------------


def test_uids_survive_restart_and_index_deletion(root):
    deliver_n(root, 5)
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        inbox.store_flags([2, 4], {SEEN, "Junk"}, "add")
        inbox.expunge([3])
        before, uidvalidity, modseq = snapshot(inbox), inbox.uidvalidity, inbox.highestmodseq
        assert set(before) == {1, 2, 4, 5}
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert snapshot(inbox) == before and inbox.uidvalidity == uidvalidity
        assert inbox.highestmodseq >= modseq
        modseq = inbox.highestmodseq
    drop_index(root)
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert snapshot(inbox) == before and inbox.uidvalidity == uidvalidity
        # The rebuilt index must not hand out MODSEQs a client may already have seen.
        assert min(m.modseq for m in inbox.messages()) > modseq
        deliver_n(root, 1, start=9)
        assert inbox.sync().added == [6]  # never 3 again


def test_a_corrupt_index_is_set_aside_and_rebuilt(root):
    deliver_n(root, 3)
    with MailboxIndex(root) as mi:
        before = snapshot(mi.folder("INBOX"))
    drop_index(root)
    (root / DB_NAME).write_bytes(b"this is not a database" * 100)
    with MailboxIndex(root) as mi:
        assert snapshot(mi.folder("INBOX")) == before
    assert (root / (DB_NAME + ".corrupt")).exists()
    with sqlite3.connect(root / DB_NAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert oct(os.stat(root / DB_NAME).st_mode & 0o777) == "0o600"


def test_an_index_of_another_schema_version_is_rebuilt(root):
    deliver_n(root, 2)
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        inbox.store_flags([2], {SEEN}, "add")
        before = snapshot(inbox)
    with sqlite3.connect(root / DB_NAME) as conn:
        conn.execute("PRAGMA user_version = 99")
    with MailboxIndex(root) as mi:
        assert snapshot(mi.folder("INBOX")) == before


def test_a_lost_uidlist_is_rewritten_from_the_index(root):
    deliver_n(root, 3)
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        uidvalidity = inbox.uidvalidity
        inbox.expunge([1])
        os.unlink(root / UIDLIST_NAME)  # while running
        inbox.store_flags([2], {SEEN}, "add")
        assert (root / UIDLIST_NAME).exists()
    os.unlink(root / UIDLIST_NAME)  # and while stopped
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert inbox.uidvalidity == uidvalidity and inbox.uids() == [2, 3]
        deliver_n(root, 1, start=5)
        assert inbox.sync().added == [4]


def test_losing_both_gives_a_new_uidvalidity(root):
    deliver_n(root, 2)
    with MailboxIndex(root) as mi:
        mi.folder("INBOX").expunge([1])
        uidvalidity = mi.folder("INBOX").uidvalidity
    drop_index(root)
    os.unlink(root / UIDLIST_NAME)
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert inbox.uidvalidity != uidvalidity and inbox.uids() == [1]


def test_a_torn_uidlist_line_is_not_fatal(root):
    deliver_n(root, 2)
    with MailboxIndex(root) as mi:
        mi.folder("INBOX")
    with open(root / UIDLIST_NAME, "ab") as f:
        f.write(b"3 1234.M5P6Q7")  # crash in the middle of an append
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert inbox.uids() == [1, 2]
        deliver_n(root, 1, start=3)
        assert inbox.sync().added == [3]
    text = (root / UIDLIST_NAME).read_text()
    assert "1234.M5P6Q7" not in text and text.endswith("\n")  # the fragment was cut off
    assert [line for line in text.splitlines() if line.startswith("3 ")] != []


def test_renamed_folder_keeps_its_uids(root, index):
    deliver_n(root / ".Sent", 2)
    sent = index.folder("Sent")
    sent.expunge([1])
    uidvalidity = sent.uidvalidity
    os.rename(root / ".Sent", root / ".Archive")
    index.forget("Sent")
    archive = index.folder("Archive")
    assert archive.uidvalidity == uidvalidity and archive.uids() == [2]


def test_uidlist_is_compacted_after_many_expunges(root, index, monkeypatch):
    monkeypatch.setattr("maildir.index_state.COMPACT_SLACK", 0)
    deliver_n(root, 10)
    inbox = index.folder("INBOX")
    inbox.expunge(range(1, 9))
    lines = (root / UIDLIST_NAME).read_text().splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["9", "10"]
    assert lines[0].split()[2] == "N11"
    deliver_n(root, 1, start=20)
    assert inbox.sync().added == [11]


# -- STORE ------------------------------------------------------------------------------------


def test_store_modes_rename_files_and_bump_modseq(root, index):
    deliver_n(root, 2)
    inbox = index.folder("INBOX")
    start = inbox.highestmodseq
    changed, failed = inbox.store_flags([1, 2], {"\\SEEN", FLAGGED}, "add")
    assert failed == [] and [m.uid for m in changed] == [1, 2]
    assert {m.modseq for m in changed} == {start + 1} == {inbox.highestmodseq}
    assert cur_name(inbox, 1).endswith(":2,FS")
    changed, _ = inbox.store_flags([1], {FLAGGED}, "remove")
    assert changed[0].flags == {SEEN} and cur_name(inbox, 1).endswith(":2,S")
    changed, _ = inbox.store_flags([2], {DELETED, "\\Draft", "\\Answered", "$Forwarded"}, "replace")
    assert changed[0].flags == {DELETED, "\\Draft", "\\Answered", "$Forwarded"}
    assert cur_name(inbox, 2).endswith(":2,DPRT")
    modseq = inbox.highestmodseq
    assert inbox.store_flags([1], {SEEN}, "add") == ([], [])  # no change, no new MODSEQ
    assert inbox.highestmodseq == modseq
    assert inbox.store_flags([99], {SEEN}, "add") == ([], [])


@pytest.mark.parametrize("flag", ["\\Recent", "\\Bogus", "bad keyword", "x(", "", "é"])
def test_store_refuses_flags_it_cannot_store(root, index, flag):
    deliver_n(root, 1)
    with pytest.raises(ValueError):
        index.folder("INBOX").store_flags([1], {flag}, "add")


def test_store_refuses_an_unknown_mode(root, index):
    deliver_n(root, 1)
    with pytest.raises(ValueError):
        index.folder("INBOX").store_flags([1], {SEEN}, "toggle")


def test_unchangedsince(root, index):
    deliver_n(root, 2)
    inbox = index.folder("INBOX")
    mark = inbox.highestmodseq
    inbox.store_flags([1], {FLAGGED}, "add")
    # RFC 7162 §3.1.3: message 1 changed after the mark, so it is not touched.
    changed, failed = inbox.store_flags([1, 2], {SEEN}, "add", unchangedsince=mark)
    assert failed == [1] and [m.uid for m in changed] == [2]
    assert inbox.get(1).flags == {FLAGGED}


def test_store_applies_to_flags_another_program_set_meanwhile(root, index):
    deliver_n(root, 1)
    inbox = index.folder("INBOX")
    settle(inbox)
    set_flags(root, cur_name(inbox, 1), "F")  # no sync in between
    inbox.store_flags([1], {SEEN}, "add")
    assert inbox.get(1).flags == {SEEN, FLAGGED}
    assert cur_name(inbox, 1).endswith(":2,FS")
    assert inbox.sync().changed == [1]  # the change found on the way is reported once


def test_store_skips_a_message_deleted_meanwhile(root, index):
    deliver_n(root, 2)
    inbox = index.folder("INBOX")
    settle(inbox)
    os.unlink(inbox.path(1))
    changed, _ = inbox.store_flags([1, 2], {SEEN}, "add")
    assert [m.uid for m in changed] == [2]
    assert inbox.sync().expunged == [1]


def _behind_our_back(fi, change) -> None:
    """Run ``change`` on the folder's files and hide it from the mtime check, as a change
    made in the same clock tick as our last look would be: only the fallbacks that look
    a message up again by its base name can then find it."""
    settle(fi)
    recorded = os.stat(fi.directory / "cur").st_mtime_ns
    change()
    os.utime(fi.directory / "cur", ns=(recorded, recorded))


@pytest.mark.parametrize("op", ["store", "expunge", "copy", "move", "read"])
def test_ops_find_a_message_renamed_in_the_same_tick(root, index, op):
    deliver_n(root, 2)
    inbox, sent = index.folder("INBOX"), index.folder("Sent")
    _behind_our_back(inbox, lambda: set_flags(root, cur_name(inbox, 1), "F"))
    if op == "store":
        inbox.store_flags([1], {SEEN}, "add")
        assert inbox.get(1).flags == {SEEN, FLAGGED} and cur_name(inbox, 1).endswith(":2,FS")
    elif op == "expunge":
        assert inbox.expunge([1]) == [1]
        assert len(os.listdir(root / "cur")) == 1
    elif op == "copy":
        assert inbox.copy([1], sent) == [(1, 1)] and sent.read(1) == _body(0)
    elif op == "move":
        assert inbox.move([1], sent) == [(1, 1)] and sent.read(1) == _body(0)
        assert len(os.listdir(root / "cur")) == 1
    else:
        assert inbox.read(1) == _body(0)


@pytest.mark.parametrize("op", ["store", "expunge", "copy", "move", "read"])
def test_ops_skip_a_message_deleted_in_the_same_tick(root, index, op):
    deliver_n(root, 2)
    inbox, sent = index.folder("INBOX"), index.folder("Sent")
    _behind_our_back(inbox, lambda: os.unlink(inbox.path(1)))
    if op == "store":
        assert [m.uid for m in inbox.store_flags([1, 2], {SEEN}, "add")[0]] == [2]
    elif op == "expunge":
        assert inbox.expunge([1]) == [1]  # gone either way
    elif op == "copy":
        assert inbox.copy([1, 2], sent) == [(2, 1)]
    elif op == "move":
        assert inbox.move([1, 2], sent) == [(2, 1)]
    else:
        with pytest.raises(MessageGone):
            inbox.read(1)
    assert inbox.sync(full=True).expunged == ([] if op == "expunge" else [1])


# -- keywords ---------------------------------------------------------------------------------


def test_keywords_get_dovecot_letters(root, index):
    deliver_n(root, 2)
    inbox = index.folder("INBOX")
    inbox.store_flags([1], {"Junk", "$Label1"}, "add")
    assert (root / "dovecot-keywords").read_text() == "0 $Label1\n1 Junk\n"
    assert cur_name(inbox, 1).endswith(":2,ab")
    inbox.store_flags([2], {"junk"}, "add")  # matched without case: one letter, one name
    assert inbox.get(2).flags == {"Junk"} and cur_name(inbox, 2).endswith(":2,b")
    assert inbox.keywords() == ["$Label1", "Junk"]
    settle(inbox)
    set_flags(root, cur_name(inbox, 2), "Sa")  # another reader swaps Junk for $Label1
    inbox.sync()
    assert inbox.get(2).flags == {SEEN, "$Label1"}


def test_keywords_past_the_26th_live_in_the_index(root, index):
    deliver_n(root, 1)
    inbox = index.folder("INBOX")
    names = {f"K{i:02d}" for i in range(30)}
    inbox.store_flags([1], names, "add")
    letters = cur_name(inbox, 1).partition(":2,")[2]
    assert letters == "abcdefghijklmnopqrstuvwxyz"
    assert len((root / "dovecot-keywords").read_text().splitlines()) == 26
    settle(inbox)
    set_flags(root, cur_name(inbox, 1), "S" + letters)  # another program's rename
    inbox.sync()
    assert inbox.get(1).flags == names | {SEEN}


def test_keyword_letters_agree_between_two_indexes(root):
    deliver_n(root, 2)
    with MailboxIndex(root) as one, MailboxIndex(root) as two:
        a, b = one.folder("INBOX"), two.folder("INBOX")

        def work(fi, uid, prefix):
            for i in range(10):
                fi.store_flags([uid], {f"{prefix}{i}"}, "add")

        threads = [
            threading.Thread(target=work, args=(a, 1, "A")),
            threading.Thread(target=work, args=(b, 2, "B")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _check_letters(root, a)


def _check_letters(root: Path, fi) -> None:
    """Every letter names one keyword, and every file carries exactly its keywords' letters."""
    lines = (root / "dovecot-keywords").read_text().splitlines()
    pairs = [line.split(" ", 1) for line in lines]
    assert len({i for i, _ in pairs}) == len({n for _, n in pairs}) == len(pairs)
    letter = {name: chr(ord("a") + int(i)) for i, name in pairs}
    for message in fi.messages():
        kws = {f for f in message.flags if not f.startswith("\\")}
        expected = "".join(sorted(letter[k] for k in kws if k in letter))
        assert cur_name(fi, message.uid).partition(":2,")[2] == expected


def _keyword_child(root: Path, uid: int, prefix: str) -> None:
    with MailboxIndex(root) as mi:
        fi = mi.folder("INBOX")
        for i in range(8):
            fi.store_flags([uid], {f"{prefix}{i}"}, "add")


def test_keyword_letters_agree_between_processes(root):
    deliver_n(root, 3)
    with MailboxIndex(root) as mi:
        mi.folder("INBOX")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_keyword_child, args=(root, n + 1, f"P{n}")) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert len(inbox.keywords()) == 24
        _check_letters(root, inbox)


# -- APPEND, COPY, MOVE, EXPUNGE --------------------------------------------------------------


def test_append(root, index):
    deliver_n(root, 1)
    inbox = index.folder("INBOX")
    quota.usage(root, 10**9)  # make maildirsize exist, so that changes are recorded
    data = _body(42)
    uid = inbox.append(data, {SEEN, "Important"}, internal_date=1_600_000_000)
    assert uid == 2 and inbox.read(uid) == data
    message = inbox.get(uid)
    assert message.flags == {SEEN, "Important"} and message.internal_date == 1_600_000_000
    assert message.size == len(data) and message.modseq == inbox.highestmodseq
    assert cur_name(inbox, uid).endswith(":2,Sa")
    assert os.stat(inbox.path(uid)).st_mtime == 1_600_000_000
    assert quota.usage(root, 10**9) == (len(_body(0)) + len(data), 2)
    assert not inbox.sync()  # nothing left for the sync to find


def test_copy(root, index):
    deliver_n(root, 3)
    inbox, sent = index.folder("INBOX"), index.folder("Sent")
    inbox.store_flags([2], {SEEN, "Work"}, "add")
    inbox.put_cached(2, "envelope", b"(ENV)")
    pairs = inbox.copy([2, 3, 77], sent)
    assert pairs == [(2, 1), (3, 2)]
    assert sent.get(1).flags == {SEEN, "Work"} and sent.read(1) == inbox.read(2)
    assert sent.get(1).internal_date == inbox.get(2).internal_date
    assert os.stat(sent.path(1)).st_ino == os.stat(inbox.path(2)).st_ino  # a hard link
    assert parse_name(sent.path(1).name).base != parse_name(inbox.path(2).name).base
    assert sent.get_cached(1, "envelope") == b"(ENV)"
    assert inbox.uids() == [1, 2, 3]
    assert inbox.copy([1], inbox) == [(1, 4)]  # COPY into the same folder
    assert (root / ".Sent" / "dovecot-keywords").read_text() == "0 Work\n"


def test_move(root, index):
    deliver_n(root, 3)
    inbox, sent = index.folder("INBOX"), index.folder("Sent")
    inbox.store_flags([1], {FLAGGED}, "add")
    inbox.put_cached(1, "bodystructure", "(TEXT)")
    mark = inbox.highestmodseq
    inode = os.stat(inbox.path(1)).st_ino
    assert inbox.move([1, 3], sent) == [(1, 1), (3, 2)]
    assert inbox.uids() == [2] and sent.uids() == [1, 2]
    assert os.stat(sent.path(1)).st_ino == inode  # renamed, not copied
    assert sent.get(1).flags == {FLAGGED} and sent.read(2) == _body(2)
    assert sent.get_cached(1, "bodystructure") == "(TEXT)"
    assert inbox.changes_since(mark).expunged == [1, 3]
    assert not inbox.sync() and not sent.sync()
    # And back: a base the folder has seen before gets a fresh UID, never its old one.
    assert sent.move([1], inbox) == [(1, 4)]
    assert inbox.move([4], inbox) == [(4, 5)]


def test_expunge(root, index):
    deliver_n(root, 3)
    inbox = index.folder("INBOX")
    quota.usage(root, 10**9)
    inbox.put_cached(2, "envelope", b"x")
    mark = inbox.highestmodseq
    assert inbox.expunge([2, 3, 50]) == [2, 3]
    assert inbox.uids() == [1] and len(os.listdir(root / "cur")) == 1
    assert inbox.changes_since(mark).expunged == [2, 3]
    assert inbox.get_cached(2, "envelope") is None
    assert quota.usage(root, 10**9) == (len(_body(0)), 1)
    assert inbox.expunge([]) == []


def test_cached_blobs(root, index):
    deliver_n(root, 3)
    inbox = index.folder("INBOX")
    inbox.put_cached_many("envelope", [(1, b"one"), (2, "two"), (99, b"ghost")])
    assert inbox.get_cached(1, "envelope") == b"one"
    assert inbox.get_cached(1, "bodystructure") is None
    assert inbox.get_cached_many([1, 2, 3, 99], "envelope") == {1: b"one", 2: "two"}


def test_changes_since(root, index):
    deliver_n(root, 3)
    inbox = index.folder("INBOX")
    whole = inbox.changes_since(0)
    assert [m.uid for m in whole.messages] == [1, 2, 3] and whole.expunged == []
    mark = whole.highestmodseq
    assert inbox.changes_since(mark).messages == []
    inbox.store_flags([2], {SEEN}, "add")
    inbox.expunge([3])
    deliver_n(root, 1, start=7)
    inbox.sync()
    changes = inbox.changes_since(mark)
    assert [m.uid for m in changes.messages] == [2, 4]
    assert changes.expunged == [3] and changes.uidnext == 5


# -- concurrency ------------------------------------------------------------------------------


def test_deliveries_racing_syncs_and_stores_lose_nothing(root, index):
    inbox = index.folder("INBOX")
    done = threading.Event()
    added: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def deliverer(n: int) -> None:
        try:
            for i in range(25):
                deliver_n(root, 1, start=n * 100 + i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def syncer() -> None:
        try:
            while not done.is_set():
                result = inbox.sync()
                with lock:
                    added.extend(result.added)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    def storer() -> None:
        rng = random.Random(1)
        try:
            while not done.is_set():
                uids = inbox.uids()
                if uids:
                    inbox.store_flags(rng.sample(uids, min(3, len(uids))), {SEEN}, "add")
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    deliverers = [threading.Thread(target=deliverer, args=(n,)) for n in range(4)]
    others = [threading.Thread(target=syncer) for _ in range(3)] + [threading.Thread(target=storer)]
    for t in deliverers + others:
        t.start()
    for t in deliverers:
        t.join()
    done.set()
    for t in others:
        t.join()
    added.extend(inbox.sync().added)
    assert errors == []
    assert sorted(added) == inbox.uids() == list(range(1, 101))  # each reported once
    assert os.listdir(root / "new") == []
    assert len(os.listdir(root / "cur")) == 100


def test_other_programs_renaming_during_syncs_never_change_a_uid(root):
    """mutt moves new/ -> cur/ and toggles flags while we deliver and two indexes (two
    processes) sync: every file ends up with exactly one UID, the one it got first."""
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: dict[str, int] = {}  # base -> the UID it was first shown with
    lock = threading.Lock()

    def guard(fn):
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        return run

    @guard
    def mutt() -> None:
        rng = random.Random(2)
        while not stop.is_set():
            for sub in ("new", "cur"):
                for name in os.listdir(root / sub)[:5]:
                    flags = "".join(rng.sample("FS", rng.randint(0, 2)))
                    try:
                        set_flags(root, name, flags)
                    except FileNotFoundError:
                        pass  # our own sync moved it first

    with MailboxIndex(root) as one, MailboxIndex(root) as two:
        folders = [one.folder("INBOX"), two.folder("INBOX")]

        def make_syncer(fi):
            @guard
            def syncer() -> None:
                while not stop.is_set():
                    fi.sync()
                    for m in fi.messages():
                        try:
                            base = parse_name(fi.path(m.uid).name).base
                        except MessageGone:
                            continue
                        with lock:
                            assert seen.setdefault(base, m.uid) == m.uid

            return syncer

        threads = [threading.Thread(target=mutt)]
        threads += [threading.Thread(target=make_syncer(fi)) for fi in folders]
        for t in threads:
            t.start()
        for i in range(60):
            deliver_n(root, 1, start=i)
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        assert errors == []
        inbox = folders[0]
        inbox.sync(full=True)
        assert len(inbox.uids()) == 60 == len(os.listdir(root / "cur"))
        for m in inbox.messages():
            name = inbox.path(m.uid).name
            assert seen.get(parse_name(name).base, m.uid) == m.uid
            letters = parse_name(name).flags
            assert {f for f in (SEEN, FLAGGED) if f in m.flags} == {
                f for f, ch in ((SEEN, "S"), (FLAGGED, "F")) if ch in letters
            }


# -- a model-based check ----------------------------------------------------------------------

LETTER_OF = {SEEN: "S", FLAGGED: "F", DELETED: "T"}


class IndexMachine(RuleBasedStateMachine):
    """Random delivers, STOREs, EXPUNGEs, other programs' renames and deletes, restarts and
    index deletions, against a dict {uid: flags}.  The index must agree after every sync."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="index-machine-"))
        self.root = self.tmp / "u"
        create_maildir(self.root, folders=())
        self.window = 0.02
        self._open()
        self.uidvalidity = self.inbox.uidvalidity
        self.model: dict[int, frozenset[str]] = {}
        self.bases: dict[int, str] = {}  # how another program knows the message
        self.pending = 0
        self.highest_uid = 0
        self.modseq = self.inbox.highestmodseq

    def _open(self) -> None:
        self.mi = MailboxIndex(self.root, dirty_window=self.window)
        self.inbox = self.mi.folder("INBOX")

    def _learn_new(self, uids: list[int]) -> None:
        """Deliveries become known when any sync (explicit or inside an op) finds them."""
        fresh = [u for u in uids if u not in self.model]
        if self.pending:
            assert len(fresh) == self.pending, (fresh, self.pending)
            assert min(fresh) > self.highest_uid
            self.highest_uid = max(fresh)
            self.model.update(dict.fromkeys(fresh, frozenset()))
            self.bases.update({u: parse_name(self.inbox.path(u).name).base for u in fresh})
            self.pending = 0
        else:
            assert fresh == []

    def _check(self) -> None:
        messages = self.inbox.messages()
        assert {m.uid: m.flags for m in messages} == self.model
        assert self.inbox.uidvalidity == self.uidvalidity
        highest = self.inbox.highestmodseq
        assert highest >= self.modseq and all(m.modseq <= highest for m in messages)
        self.modseq = highest

    def _file_of(self, uid: int) -> Path:
        """Where the message is now (the index may not know yet: no sync since)."""
        base = self.bases[uid]
        for sub in ("cur", "new"):
            for name in os.listdir(self.root / sub):
                if parse_name(name).base == base:
                    return self.root / sub / name
        raise AssertionError(f"message {uid} lost")

    def _after_other_program(self) -> None:
        # Same-tick changes in cur/ may show up to the dirty window late (by design).
        time.sleep(self.window * 1.2)

    @rule(n=st.integers(1, 3))
    def deliver(self, n: int) -> None:
        deliver_n(self.root, n)
        self.pending += n

    @rule()
    def sync(self) -> None:
        result = self.inbox.sync()
        self._learn_new(self.inbox.uids())
        assert len(set(result.added)) == len(result.added)
        self._check()

    @precondition(lambda self: self.model)
    @rule(
        data=st.data(),
        flags=st.sets(st.sampled_from([SEEN, FLAGGED, DELETED, "Junk", "k2"])),
        mode=st.sampled_from(["add", "remove", "replace"]),
    )
    def store(self, data, flags, mode) -> None:
        uids = data.draw(st.sets(st.sampled_from(sorted(self.model)), min_size=1))
        self.inbox.store_flags(uids, flags, mode)
        self._learn_new(self.inbox.uids())
        for uid in uids:
            old = self.model[uid]
            new = old | flags if mode == "add" else old - flags if mode == "remove" else flags
            self.model[uid] = frozenset(new)
        self._check()

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def expunge(self, data) -> None:
        uids = data.draw(st.sets(st.sampled_from(sorted(self.model)), min_size=1))
        assert sorted(self.inbox.expunge(uids)) == sorted(uids)
        self._learn_new(self.inbox.uids())
        for uid in uids:
            del self.model[uid]
            del self.bases[uid]
        self._check()

    @precondition(lambda self: self.model)
    @rule(data=st.data(), letters=st.sets(st.sampled_from("SFT")))
    def other_program_renames(self, data, letters) -> None:
        uid = data.draw(st.sampled_from(sorted(self.model)))
        path = self._file_of(uid)
        keep = "".join(ch for ch in parse_name(path.name).flags if ch.islower())
        set_flags(self.root, path.name, "".join(letters) + keep)
        system = {flag for flag, letter in LETTER_OF.items() if letter in letters}
        self.model[uid] = frozenset(system | {f for f in self.model[uid] if f in ("Junk", "k2")})
        self._after_other_program()

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def other_program_deletes(self, data) -> None:
        uid = data.draw(st.sampled_from(sorted(self.model)))
        os.unlink(self._file_of(uid))
        del self.model[uid], self.bases[uid]
        self._after_other_program()

    @rule()
    def restart(self) -> None:
        self.mi.close()
        self._open()
        self.sync()

    @rule()
    def lose_the_index(self) -> None:
        self.mi.close()
        drop_index(self.root)
        self._open()
        self.sync()
        assert min((m.modseq for m in self.inbox.messages()), default=self.modseq + 1) > 0

    @invariant()
    def uids_below_uidnext(self) -> None:
        assert all(uid < self.inbox.uidnext for uid in self.model)

    def teardown(self) -> None:
        self.mi.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


IndexMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_index_agrees_with_a_model = IndexMachine.TestCase
