"""STORE on many messages (index_ops.store_flags): files first and index second, other
programs renaming or deleting files meanwhile, and a failure on either side losing nothing
of what the files say; the answer given before the rows are written, and every reader,
here or in another process, waiting for them."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from maildir import Delivery, create_maildir, deliver, index_ops
from maildir import index_sql as sql
from maildir.index import MailboxIndex
from maildir.index_state import split_name
from tests.support.maildirproc import committed_rows, run_python

N = 40


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "u"
    create_maildir(root, folders=())
    for i in range(N):
        deliver([Delivery(root, [b"Subject: %d\r\n\r\nbody\r\n" % i])])
    with MailboxIndex(root) as mi:
        yield mi.folder("INBOX")


def names(fi) -> list[str]:
    return sorted(os.listdir(fi.directory / "cur"))


def test_big_store_matches_files_and_index_with_others_renaming_and_deleting(folder,
                                                                           monkeypatch):
    cur = folder.directory / "cur"
    paths = folder.paths(range(1, N + 1))
    # Another program deletes one file and flags another after the STORE's own sync.
    monkeypatch.setattr(folder, "_sync_before_change", lambda full=False: None)
    os.unlink(paths[7])
    os.rename(paths[9], paths[9] + "F")
    changed, failed = folder.store_flags(range(1, N + 1), {"\\Seen"}, "add")
    assert failed == [] and [i.uid for i in changed] == [u for u in range(1, N + 1) if u != 7]
    assert {i.modseq for i in changed} == {folder.highestmodseq}
    assert next(i for i in changed if i.uid == 9).flags == {"\\Seen", "\\Flagged"}
    assert all(n.endswith(("2,S", "2,FS")) for n in names(folder))
    # The index names every file as it now is: a full listing finds no flag to change.
    monkeypatch.undo()
    assert folder.sync(full=True).changed == []
    assert sorted(folder.paths(range(1, N + 1)).values()) == \
        sorted(str(cur / n) for n in names(folder))
    # Removing is the same path: back to unseen, every file renamed again.
    changed, _ = folder.store_flags(range(1, N + 1), {"\\Seen"}, "remove")
    assert len(changed) == N - 1 and not any(n.endswith("S") for n in names(folder))


def test_an_index_failure_leaves_the_renamed_files_for_the_next_sync(folder, monkeypatch):
    def failing(conn, folder_id, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sql, "update_files", failing)
    monkeypatch.setattr(sql, "update_flags", lambda conn, folder_id, modseq, rows:
                        failing(conn, folder_id, rows))
    before = folder.highestmodseq
    with pytest.raises(OSError):
        folder.store_flags(range(1, N + 1), {"\\Seen"}, "add")
    monkeypatch.undo()
    assert folder.highestmodseq == before  # the transaction rolled back
    # Files first: every rename is a flag change the next sync takes in.
    assert sum(n.endswith("S") for n in names(folder)) == N
    assert len(folder.sync(full=True).changed) == N
    assert all("\\Seen" in i.flags for i in folder.messages())


def test_rename_failure_reaches_the_caller_and_nothing_is_recorded(folder, monkeypatch):
    real = os.rename
    count = []

    def rename(src, dst, *args, **kwargs):
        count.append(1)
        if len(count) == 8:
            raise PermissionError(13, "Permission denied")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(index_ops.os, "rename", rename)
    before = folder.highestmodseq
    with pytest.raises(PermissionError):
        folder.store_flags(range(1, N + 1), {"\\Seen"}, "add")
    monkeypatch.undo()
    assert folder.highestmodseq == before  # the transaction rolled back
    assert len(folder.sync(full=True).changed) == 7  # the seven renamed files


def test_rows_keeping_and_changing_keywords_in_one_store_are_both_recorded(folder):
    folder.store_flags(range(1, N // 2 + 1), {"$Work"}, "add")
    # Half keep their keywords (only flags and name written), half gain one (all columns).
    changed, _ = folder.store_flags(range(1, N + 1), {"\\Flagged", "$Work"}, "add")
    assert len(changed) == N
    assert all(i.flags == {"\\Flagged", "$Work"} for i in folder.messages())
    assert folder.sync(full=True).changed == []
    assert sorted(folder.paths(range(1, N + 1)).values()) == \
        sorted(str(folder.directory / "cur" / n) for n in names(folder))


def known_matches_index(fi) -> bool:
    from maildir.index_state import KnownFiles

    known = fi._known
    known.catch_up()
    with fi.index.connection() as conn:
        loaded = KnownFiles.load(conn, known.folder_id, known.version)
    return (known.by_dir, known.bases) == (loaded.by_dir, loaded.bases)


def test_the_file_list_takes_in_a_store_when_next_read_and_in_commit_order(folder, monkeypatch):
    from maildir import index_state

    folder.sync(full=True)  # loads the in-memory file list
    folder.store_flags(range(1, N + 1), {"\\Seen"}, "add")
    assert len(folder._known.pending) == 1  # not applied yet...
    assert folder.sync(full=True).changed == []  # ...but before the listing reads it
    assert folder._known.pending == [] and known_matches_index(folder)
    # No listing in between from here on (as when the folder's directories look unchanged).
    monkeypatch.setattr(folder, "_sync_before_change", lambda full=False: None)
    # An expunge after a deferred STORE is applied after it, not before.
    folder.store_flags([1, 2, 3], {"\\Deleted"}, "add")
    assert len(folder._known.pending) == 1
    assert folder.expunge([2, 3], only_deleted=True) == [2, 3]
    assert known_matches_index(folder)
    # Nothing reading the list: the kept changes are applied once there are MAX_PENDING.
    monkeypatch.setattr(index_state, "MAX_PENDING", 3)
    for flag in ("\\Flagged", "\\Answered", "\\Draft"):
        folder.store_flags([1, 4], {flag}, "add")
    assert folder._known.pending == [] and known_matches_index(folder)
    monkeypatch.undo()
    assert folder.sync(full=True).changed == []


# --- rows written after the reply (index_ops.WRITE_BEHIND_ROWS) --------------------------


def seen_in_db(fi) -> int:
    """\\Seen rows as committed, read past the index's own door."""
    return committed_rows(fi, "flags & 1")


@pytest.fixture
def behind(monkeypatch):
    monkeypatch.setattr(index_ops, "WRITE_BEHIND_ROWS", 5)


def test_a_reader_after_the_reply_waits_for_the_rows_and_sees_them(folder, behind):
    results: dict[str, object] = {}
    readers = []

    def read() -> None:
        results["seen"] = sum("\\Seen" in i.flags for i in folder.messages())
        results["unseen"] = folder.status().unseen

    def loop_calls() -> None:
        # The event loop's own calls do not wait: they send their work to a thread.
        results["unchanged"] = folder.unchanged_since(modseq)
        results["located"] = folder.located([1, 2], dates=False)  # else: the old flags
        results["paths"] = sorted(folder.paths([1, 2]))

    def replied(changed, failed) -> None:
        results["replied"] = [i.uid for i in changed], failed
        assert seen_in_db(folder) == 0  # answered before the rows are written
        loop = threading.Thread(target=loop_calls)
        loop.start()
        loop.join(5)
        results["loop_waited"] = loop.is_alive()
        readers.append(threading.Thread(target=read))
        readers[0].start()
        readers[0].join(0.3)
        results["waited"] = readers[0].is_alive()

    modseq = folder.highestmodseq
    changed, failed = folder.store_flags(range(1, N + 1), {"\\Seen"}, "add", replied=replied)
    readers[0].join()
    assert results["replied"] == ([i.uid for i in changed], failed) == (list(range(1, N + 1)), [])
    assert results["waited"] and results["seen"] == N and results["unseen"] == 0
    assert not results["loop_waited"] and results["unchanged"] is False
    assert results["located"] == ({}, {}) and results["paths"] == [1, 2]
    assert seen_in_db(folder) == N and folder.sync(full=True).changed == []
    # Few changes: no early answer, the rows are written first.
    calls = []
    folder.store_flags([1, 2], {"\\Flagged"}, "add", replied=lambda *a: calls.append(a))
    assert calls == []


def test_another_process_reading_after_the_reply_sees_the_new_flags(folder, behind):
    # A process that opens the folder takes its writer lock (flock), held until the commit.
    code = ("import sys\nfrom maildir.index import MailboxIndex\nprint('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            "with MailboxIndex(sys.argv[1]) as mi:\n"
            "    print(sum('\\\\Seen' in i.flags for i in mi.folder('INBOX').messages()))\n")
    child = run_python(code, str(folder.index.root), stdin=subprocess.PIPE)
    assert child.stdout.readline() == "ready\n"

    def replied(changed, failed) -> None:
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(0.3)  # the child is at the lock by now

    folder.store_flags(range(1, N + 1), {"\\Seen"}, "add", replied=replied)
    out, _ = child.communicate(timeout=30)
    assert out.strip() == str(N)


def test_a_crash_after_the_reply_loses_no_flag_or_uid(folder):
    # The process dies once it has answered, before the rows are written: the renamed
    # files are the truth, and the next sync reads every flag back, each message keeping
    # its UID; MODSEQs go on from above the one the client was given.
    root = folder.index.root
    uids_before = {split_name(os.path.basename(p))[0]: uid
                   for uid, p in folder.paths(range(1, N + 1)).items()}
    folder.index.close()
    code = ("import os, sys\nfrom maildir import index_ops\nfrom maildir.index import "
            "MailboxIndex\nindex_ops.WRITE_BEHIND_ROWS = 5\n"
            "def replied(changed, failed):\n"
            "    print(max(i.modseq for i in changed), flush=True)\n"
            "    os._exit(0)\n"
            "with MailboxIndex(sys.argv[1]) as mi:\n"
            "    mi.folder('INBOX').store_flags(range(1, 41), {'\\\\Seen'}, 'add', "
            "replied=replied)\n")
    child = run_python(code, str(root))
    out, _ = child.communicate(timeout=30)
    told = int(out)
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert seen_in_db(inbox) == N  # the first sync in this process took them in
        assert all(i.flags == {"\\Seen"} for i in inbox.messages())
        assert {split_name(os.path.basename(p))[0]: uid
                for uid, p in inbox.paths(range(1, N + 1)).items()} == uids_before
        assert min(i.modseq for i in inbox.messages()) > told
        assert inbox.sync(full=True).changed == []


def test_a_failure_writing_the_rows_after_the_reply_opens_the_door(folder, behind,
                                                                   monkeypatch):
    def failing(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sql, "update_flags", failing)
    told = []
    with pytest.raises(OSError):
        folder.store_flags(range(1, N + 1), {"\\Seen"}, "add",
                           replied=lambda changed, failed: told.append(changed))
    monkeypatch.undo()
    assert len(told[0]) == N and not folder._rows_pending()
    assert seen_in_db(folder) == 0  # rolled back
    assert len(folder.sync(full=True).changed) == N
    assert all("\\Seen" in i.flags for i in folder.messages())
