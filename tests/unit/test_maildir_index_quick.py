"""index_quick: the check after every command reads the folder row again only after a commit."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from maildir import Delivery, create_maildir, deliver, index_quick
from maildir.index import MailboxIndex
from maildir.index_quick import QuickRows

QUERY = "SELECT value FROM t WHERE id = ?"


class Counting:
    """A connection that counts the queries it is asked to run."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.queries = 0

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def execute(self, *args):
        self.queries += 1
        return self.conn.execute(*args)


def _db(tmp_path):
    path = tmp_path / "db.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, value INTEGER)")
    conn.execute("INSERT INTO t VALUES (1, 10), (2, 20)")
    return path, conn


def test_the_row_is_read_again_only_after_a_commit_from_anywhere(tmp_path):
    path, conn = _db(tmp_path)
    quick, reader = QuickRows(path), Counting(conn)
    assert quick.row(reader, QUERY, 1) == (10,)
    assert quick.row(reader, QUERY, 1) == (10,) and reader.queries == 1
    assert quick.row(reader, QUERY, 2) == (20,) and reader.queries == 2  # by id
    other = sqlite3.connect(path, isolation_level=None)  # another connection of the process
    other.execute("UPDATE t SET value = 11 WHERE id = 1")
    assert quick.row(reader, QUERY, 1) == (11,) and reader.queries == 3
    # Another process: the same header, written through its own mapping of the -shm file.
    subprocess.run([sys.executable, "-c", "import sqlite3, sys; sqlite3.connect(sys.argv[1], "
                    "isolation_level=None).execute('UPDATE t SET value = 12 WHERE id = 1')",
                    str(path)], check=True)
    assert quick.row(reader, QUERY, 1) == (12,) and reader.queries == 4
    other.execute("UPDATE t SET value = 21 WHERE id = 2")  # any commit, not only this row's
    assert quick.row(reader, QUERY, 1) == (12,) and reader.queries == 5
    quick.close()


def test_inside_a_transaction_sqlite_is_asked_and_no_row_is_not_remembered(tmp_path):
    path, conn = _db(tmp_path)
    quick, reader = QuickRows(path), Counting(conn)
    assert quick.row(reader, QUERY, 1) == (10,) and reader.queries == 1
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM t WHERE id = 1")  # not committed: the stamp has not moved
    assert quick.row(reader, QUERY, 1) is None and reader.queries == 2
    conn.execute("ROLLBACK")
    assert quick.row(reader, QUERY, 1) == (10,) and reader.queries == 2
    assert quick.row(reader, QUERY, 3) is None and quick.row(reader, QUERY, 3) is None
    assert reader.queries == 4
    quick.close()


def test_without_a_wal_index_every_check_asks_sqlite(tmp_path):
    path, conn = _db(tmp_path)
    quick, reader = QuickRows(tmp_path / "elsewhere.sqlite3"), Counting(conn)
    for _ in range(3):
        assert quick.row(reader, QUERY, 1) == (10,)
    assert reader.queries == 3


def test_a_wal_index_made_again_is_read_not_the_old_one(tmp_path, monkeypatch):
    """Checked once a second (RECHECK); here at every call."""
    monkeypatch.setattr(index_quick, "RECHECK", 0.0)
    path, conn = _db(tmp_path)
    quick, reader = QuickRows(path), Counting(conn)
    quick.row(reader, QUERY, 1)
    conn.close()  # the last connection: SQLite removes the -shm file
    assert not os.path.exists(f"{path}-shm")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE t SET value = 13 WHERE id = 1")
    reader.conn = conn
    assert quick.row(reader, QUERY, 1) == (13,)
    quick.close()


def test_unchanged_since_still_sees_another_sessions_store(tmp_path):
    root = tmp_path / "u"
    create_maildir(root, folders=())
    deliver([Delivery(root, [b"Subject: a\r\n\r\nx\r\n"])])
    with MailboxIndex(root, dirty_window=0.0) as index:
        folder = index.folder("INBOX")
        folder.sync(full=True)
        modseq = folder.highestmodseq
        assert folder.unchanged_since(modseq) and folder.unchanged_since(modseq)
        folder.store_flags([1], {"\\Seen"}, "add")
        assert not folder.unchanged_since(modseq)
        folder.sync()  # what the session's refresh does
        assert folder.unchanged_since(folder.highestmodseq)
