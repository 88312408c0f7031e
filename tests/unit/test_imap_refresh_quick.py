"""The quick check before the poll that ends every IMAP command: ``Selected.unchanged()``
(``FolderIndex.unchanged_since``) must say "changed" whenever ``refresh()`` would find news,
since the session then skips the refresh."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from maildir import Delivery, create_maildir, deliver
from maildir.index import MailboxIndex
from server.imap.selected import Selected


@pytest.fixture
def index(tmp_path):
    root = tmp_path / "alice"
    create_maildir(root)
    for i in range(3):
        deliver([Delivery(root, [b"Subject: m %d\r\n\r\nbody\r\n" % i])])
    # A tiny dirty window: the test waits it out instead of two seconds.
    with MailboxIndex(root, dirty_window=0.05) as mi:
        yield mi


def opened(index: MailboxIndex) -> Selected:
    view = Selected(index.folder("INBOX"), "INBOX", readonly=False, condstore=False,
                    mailbox_index=index)
    view.load()
    time.sleep(0.1)
    view.refresh()  # past the dirty window: the directories' mtimes are now proof
    return view


def settled(view: Selected) -> None:
    time.sleep(0.1)
    view.refresh()


def test_nothing_happened_is_unchanged(index):
    view = opened(index)
    assert view.unchanged() and view.unchanged()
    assert view.refresh() == ([], [])


def test_a_delivery_is_a_change_until_refreshed(index):
    view = opened(index)
    deliver([Delivery(index.root, [b"Subject: new\r\n\r\nbody\r\n"])])
    assert not view.unchanged()
    new, _ = view.refresh()
    assert len(new) == 1
    settled(view)
    assert view.unchanged()


def test_another_session_storing_flags_is_a_change(index):
    view, other = opened(index), opened(index)
    other.folder.store_flags([2], {"\\Flagged"}, "add")
    assert not view.unchanged()
    assert view.refresh()[1] == [2]


def test_another_program_renaming_or_deleting_a_file_is_a_change(index):
    view = opened(index)
    cur = index.root / "cur"
    name = sorted(os.listdir(cur))[0]
    os.rename(cur / name, cur / (name + "S"))
    assert not view.unchanged()
    assert view.refresh()[1]
    settled(view)
    assert view.unchanged()
    os.unlink(cur / sorted(os.listdir(cur))[-1])
    assert not view.unchanged()
    view.refresh()
    assert view.pending_expunge


def test_a_folder_deleted_under_the_session_is_not_unchanged(index, tmp_path):
    view = opened(index)
    shutil.rmtree(index.root / "cur")
    assert not view.unchanged()


def test_a_sessions_own_store_needs_no_reading_back_unless_another_came_between(index):
    view, other = opened(index), opened(index)
    changed, _ = view.folder.store_flags([1, 3], {"\\Seen"}, "add")
    view.stored(changed)
    assert view.flags[1] == {"\\Seen"} and view.flags[3] == {"\\Seen"}
    assert view.unchanged()  # current at the STORE's MODSEQ: nothing to read back
    other.folder.store_flags([2], {"\\Flagged"}, "add")  # another session's change...
    changed, _ = view.folder.store_flags([1], {"\\Answered"}, "add")
    view.stored(changed)  # ...came between: the view must still catch up on it
    assert not view.unchanged()
    assert view.refresh()[1] == [2] and view.flags[2] == {"\\Flagged"}


def test_is_current_until_the_folder_is_forgotten(index):
    view = opened(index)
    assert index.is_current(view.folder)
    index.forget("INBOX")  # as IMAP DELETE or RENAME does
    assert not index.is_current(view.folder) and not view.unchanged()
