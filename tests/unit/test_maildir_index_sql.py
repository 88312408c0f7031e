"""The index's SQL layer: UID lists in ``IN (...)`` come in few shapes, so each connection's
statement cache stays small (the soak test saw the heap grow by one statement per list length,
per connection)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from maildir import Delivery, create_maildir, deliver
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
        assert len(shapes) <= 2 * 7, len(shapes)  # 1, 2, 4, ..., 64 for each of two queries


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
