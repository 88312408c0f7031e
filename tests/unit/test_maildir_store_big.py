"""STORE on many messages (index_ops.store_flags): files first and index second, other
programs renaming or deleting files meanwhile, and a failure on either side losing nothing
of what the files say."""

from __future__ import annotations

import os

import pytest

from maildir import Delivery, create_maildir, deliver, index_ops
from maildir import index_sql as sql
from maildir.index import MailboxIndex

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
