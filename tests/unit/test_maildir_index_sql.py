"""The index's SQL layer: UID lists in ``IN (...)`` come in few shapes, so each connection's
statement cache stays small (the soak test saw the heap grow by one statement per list length,
per connection)."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from maildir import Delivery, create_maildir, deliver, index_derived, index_insert
from maildir import index_sql as sql
from maildir.index import IDLE_CONNECTIONS, MailboxIndex


def test_in_list_pads_to_powers_of_two():
    assert sql.in_list([7]) == ("?", (7,))
    assert sql.in_list([1, 2, 3]) == ("?,?,?,?", (1, 2, 3, 3))
    assert {len(sql.in_list(list(range(n)))[1]) for n in range(1, sql.CHUNK + 1)} == {
        1, 2, 4, 8, 16, 32, 64, 128, 256, 512, sql.CHUNK}


def test_lookups_by_uid_use_few_statement_texts(tmp_path):
    create_maildir(tmp_path)
    deliver([Delivery(tmp_path, [f"Subject: {n}\r\n\r\nbody\r\n".encode()]) for n in range(40)])
    with MailboxIndex(tmp_path) as index:
        folder = index.folder("INBOX")
        uids = folder.uids()
        texts: set[str] = set()
        with index.connection() as conn:  # calls in the block use this connection
            index._local.conn = _Recorder(conn, texts)
            for n in range(1, len(uids) + 1):
                got = folder.get_many(uids[:n])
                assert sorted(got) == uids[:n]  # padding repeats a UID: none twice, none missing
                assert folder.get_cached_many(uids[:n], "envelope") == {}
        shapes = {t for t in texts if " IN (" in t}
        # 1, 2, 4, ..., 64 for each of three queries: rows, cached values, and the file
        # names of the rows whose internal date is read the first time (index_dates).
        assert len(shapes) <= 3 * 7, len(shapes)


class _Recorder:
    """A connection that notes the SQL text of every execute()."""

    def __init__(self, conn, texts: set[str]):
        self._conn, self._texts = conn, texts

    def execute(self, sql_text, *args):
        self._texts.add(sql_text)
        return self._conn.execute(sql_text, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_connections_are_pooled_per_index_not_kept_per_thread(tmp_path):
    """Sixteen worker threads reading one user's index leave at most IDLE_CONNECTIONS open
    (one per thread per user grew the soak test's server towards 800 connections)."""
    create_maildir(tmp_path)
    deliver([Delivery(tmp_path, [b"Subject: x\r\n\r\nbody\r\n"])])
    with MailboxIndex(tmp_path) as index:
        folder = index.folder("INBOX")
        barrier = threading.Barrier(16)

        def read(_):
            barrier.wait()  # all at once: the pool has to open more than it keeps
            return [len(folder.messages()) for _ in range(20)]

        with ThreadPoolExecutor(16) as pool:
            assert all(counts == [1] * 20 for counts in pool.map(read, range(16)))
        assert 1 <= len(index._conns) <= IDLE_CONNECTIONS
        with ThreadPoolExecutor(16) as pool:  # new threads reuse what is kept
            list(pool.map(lambda _: folder.status(), range(64)))
        assert len(index._conns) <= IDLE_CONNECTIONS
    with pytest.raises(RuntimeError):  # a connection only exists inside a call
        MailboxIndex(tmp_path)._conn()


def _bulk_db(tmp_path):
    path = tmp_path / sql.DB_NAME
    sql.prepare(path)
    conn = sql.connect(path)
    with sql.write_txn(conn):
        sql.create_folder(conn, "INBOX", 1, 1, 0)
        sql.create_folder(conn, "Sent", 2, 1, 0)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    return conn, statements


def _rows(folder: int, n: int, start: int = 1) -> list[tuple]:
    return [
        (folder, uid, 5, uid % 2, "", 100 + uid, 1700000000 + uid, f"b{uid}", "cur", f"b{uid}:2,")
        for uid in range(start, start + n)
    ]


def _schema(conn) -> list[tuple]:
    return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()


def test_a_bulk_insert_into_an_empty_table_builds_the_same_indexes_after(tmp_path, monkeypatch):
    monkeypatch.setattr(sql, "BULK_ROWS", 10)
    conn, statements = _bulk_db(tmp_path)
    before = _schema(conn)
    with sql.write_txn(conn):
        index_insert.insert_rows(conn, iter(_rows(1, 50)), 50)
    assert any(s.startswith("DROP INDEX") for s in statements)
    assert _schema(conn) == before
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    unseen = "SELECT uid FROM messages WHERE folder = 1 AND flags & 1 = 0 ORDER BY uid"
    assert [uid for (uid,) in conn.execute(unseen)] == list(range(2, 51, 2))
    # Rows there now: the next big insert goes into the indexes as they are.
    statements.clear()
    with sql.write_txn(conn):
        index_insert.insert_rows(conn, _rows(2, 50), 50)
    assert not any(s.startswith("DROP INDEX") for s in statements)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_failed_bulk_insert_leaves_table_and_indexes_as_they_were(tmp_path, monkeypatch):
    monkeypatch.setattr(sql, "BULK_ROWS", 10)
    conn, _ = _bulk_db(tmp_path)
    before = _schema(conn)
    rows = _rows(1, 50)
    rows.append((1, 51, *rows[0][2:]))  # a second UID for base b1: the unique index refuses
    with pytest.raises(sqlite3.IntegrityError), sql.write_txn(conn):
        index_insert.insert_rows(conn, rows, len(rows))
    assert _schema(conn) == before
    assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)


def test_a_bulk_insert_while_the_connection_is_reading_keeps_the_indexes(tmp_path, monkeypatch):
    monkeypatch.setattr(sql, "BULK_ROWS", 10)
    conn, _ = _bulk_db(tmp_path)
    before = _schema(conn)
    with sql.write_txn(conn):
        reading = conn.execute("SELECT id FROM folders")
        reading.fetchone()  # one of two rows: the statement is still active
        index_insert.insert_rows(conn, _rows(1, 50), 50)  # DROP INDEX refused: inserted as it is
        reading.close()
    assert _schema(conn) == before
    assert conn.execute("SELECT count(*) FROM messages").fetchone() == (50,)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_commit_without_checkpoint_leaves_the_wal_for_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(sql, "AUTOCHECKPOINT", 1)  # an ordinary commit then always does it
    path = tmp_path / sql.DB_NAME
    sql.prepare(path)
    conn = sql.connect(path)
    conn.execute(f"PRAGMA wal_autocheckpoint = {sql.AUTOCHECKPOINT}")
    blob = b"x" * 200_000

    def insert(uid: int, checkpoint: bool) -> int:
        with sql.write_txn(conn, checkpoint=checkpoint):
            conn.execute("INSERT INTO messages VALUES (1, ?, 1, 0, '', 1, 1, ?, 'cur', ?)",
                         (uid, f"b{uid}", f"b{uid}:2,"))
            index_derived.put_cache(conn, 1, "k", [(uid, blob)])
        return path.stat().st_size

    before = path.stat().st_size
    assert insert(1, checkpoint=True) > before + len(blob)  # copied into the file at COMMIT
    size = insert(2, checkpoint=False)
    assert size == path.stat().st_size < insert(3, checkpoint=True) - len(blob)
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1  # restored
    size = insert(4, checkpoint=False)
    sql.checkpoint(conn)
    assert path.stat().st_size > size + len(blob)
    conn.close()


def test_a_big_store_leaves_its_checkpoint_due_until_checkpoint(tmp_path, monkeypatch):
    from maildir import index_ops

    monkeypatch.setattr(index_ops, "DEFER_CHECKPOINT_ROWS", 5)
    root = tmp_path / "u"
    create_maildir(root, folders=())
    for i in range(8):
        deliver([Delivery(root, [b"Subject: %d\r\n\r\nbody\r\n" % i])])
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        inbox.store_flags([1, 2], {"\\Seen"}, "add")
        assert not mi.checkpoint_due
        inbox.store_flags(range(1, 9), {"\\Flagged"}, "add")
        assert mi.checkpoint_due
        mi.checkpoint()
        assert not mi.checkpoint_due
        assert all("\\Flagged" in i.flags for i in inbox.messages())
