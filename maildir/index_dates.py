"""Internal dates, read from the message files when a command first needs them.

A sync does not stat() a file whose name gives its size (index_adds): a first sync of
100,000 messages would spend a third of its time on it, for a date most clients never ask
for.  So a row's internal_date is NULL until something reads it (FETCH INTERNALDATE, SEARCH
BEFORE/ON/SINCE, a MessageInfo from ``get``/``get_many``/``located``/``messages``).  Then the
dates of all the rows it asked for are read in one pass and written back in one
transaction, so a file is stat()ed once in the life of its row.  Dovecot does the same: it
reads a Maildir message's received date when it is first asked for and caches it.

The date is the file's mtime, which a rename (another program changing flags) keeps; so
storing it changes nothing a client can see, takes no MODSEQ and needs no writer lock,
only SQLite's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING

from maildir import index_sql as sql

if TYPE_CHECKING:
    from maildir.index import FolderIndex

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_MTIME = attrgetter("st_mtime")


def dated(fi: FolderIndex, rows: Sequence[tuple], at: int) -> list[tuple]:
    """``rows`` (plain tuples, the UID first and the date at ``at``) with every unknown date
    read and stored.  A row whose file is gone for good (deleted by another program since
    the last sync) is left out, as that sync's expunge would have left it out."""
    missing = [r[0] for r in rows if r[at] is None]
    if not missing:
        return list(rows)
    dates = read_dates(fi, missing)
    result = []
    for r in rows:
        if r[at] is None:
            date = dates.get(r[0])
            if date is None:
                continue
            r = (*r[:at], date, *r[at + 1 :])
        result.append(r)
    return result


def read_dates(fi: FolderIndex, uids: Sequence[int]) -> dict[int, int]:
    """The internal dates of these UIDs (rows whose date is NULL), read and stored.

    A file not found under the name the index has was renamed or deleted by another program
    since the last sync: one full sync finds the new names (and expunges the deleted, which
    are then missing from the result).  No call holds a transaction open here: each public
    FolderIndex call starts with its connection outside one.  A caller on the event loop
    uses ``stat_files`` instead (see FolderIndex.located).
    """
    conn = fi._conn()
    dates = stat_files(fi, _files(conn, fi._id, uids))
    if len(dates) < len(uids):
        fi._sync_before_change(full=True)
        left = [u for u in uids if u not in dates]
        dates.update(stat_files(fi, _files(conn, fi._id, left)))
    if dates:
        with sql.write_txn(conn):
            conn.executemany(
                "UPDATE messages SET internal_date = ? WHERE folder = ? AND uid = ?",
                [(date, fi._id, uid) for uid, date in dates.items()],
            )
    return dates


def _files(conn, folder_id: int, uids: Sequence[int]) -> list[tuple]:
    """``(uid, subdir, name)`` of those of ``uids`` in the folder."""
    if len(uids) > 20 * sql.CHUNK:  # most of a big folder: one scan beats many lookups
        wanted = set(uids)
        query = "SELECT uid, subdir, name FROM messages WHERE folder = ? AND internal_date IS NULL"
        return [row for row in conn.execute(query, (folder_id,)) if row[0] in wanted]
    return sql.file_names(conn, folder_id, uids)


def stat_files(fi: FolderIndex, files: list[tuple]) -> dict[int, int]:
    """``uid -> int(mtime)`` of ``(uid, subdir, name)`` files that exist; nothing stored,
    no sync, no lock (a file not found is left out)."""
    dates: dict[int, int] = {}
    for subdir in {entry[1] for entry in files}:
        uids = [uid for uid, at, _ in files if at == subdir]
        names = [name for _, at, name in files if at == subdir]
        # stat() by name in the open directory: the kernel does not walk the whole path
        # again for each file (an eighth of the time, for a folder's worth).
        fd = os.open(fi.directory / subdir, _DIR_FLAGS)
        try:
            stat = partial(os.stat, dir_fd=fd)
            try:
                # All at once in C, as a folder's worth of dates is read at a time.
                stats = list(map(stat, names))
            except FileNotFoundError:  # one is gone: one by one, leaving it out
                for uid, name in zip(uids, names, strict=True):
                    try:
                        dates[uid] = int(stat(name).st_mtime)
                    except FileNotFoundError:
                        continue
            else:
                dates.update(zip(uids, map(int, map(_MTIME, stats)), strict=True))
        finally:
            os.close(fd)
    return dates
