"""The index's SQL layer: UID lists in ``IN (...)`` come in few shapes, so each connection's
statement cache stays small (the soak test saw the heap grow by one statement per list length,
per connection, and there is a connection per thread per user)."""

from __future__ import annotations

from maildir import Delivery, create_maildir, deliver
from maildir import index_sql as sql
from maildir.index import MailboxIndex


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
        index._local.conn = _Recorder(folder._conn(), texts)  # this thread's connection
        for n in range(1, len(uids) + 1):
            got = folder.get_many(uids[:n])
            assert sorted(got) == uids[:n]  # padding repeats a UID: no row twice, none missing
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
