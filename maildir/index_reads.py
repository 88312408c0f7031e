"""The reads FolderIndex makes of a whole folder, or of its changes since a MODSEQ: what
SELECT, STATUS, an IDLE poll and a FETCH of many messages start from."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from maildir.index_sql import CHUNK, chunks, in_list

_INFO = "SELECT uid, flags, keywords, size, internal_date, modseq FROM messages"


def info_rows(
    conn: sqlite3.Connection, folder_id: int, *, uid: int | None = None, since: int = 0
) -> sqlite3.Cursor:
    """(uid, flags, keywords, size, internal_date, modseq) rows in UID order: one message,
    those with MODSEQ > ``since``, or all."""
    if uid is not None:
        return conn.execute(f"{_INFO} WHERE folder = ? AND uid = ?", (folder_id, uid))
    if since > 0:
        # INDEXED BY: left alone, SQLite walks the whole folder in UID order to avoid a
        # sort: 5 ms at 100k messages for an IDLE poll that usually finds nothing.
        return conn.execute(
            f"{_INFO} INDEXED BY messages_modseq WHERE folder = ? AND modseq > ? ORDER BY uid",
            (folder_id, since),
        )
    return conn.execute(f"{_INFO} WHERE folder = ? ORDER BY uid", (folder_id,))


def flag_rows(conn: sqlite3.Connection, folder_id: int) -> sqlite3.Cursor:
    """(uid, flags, keywords) of every message, in UID order."""
    return conn.execute(
        "SELECT uid, flags, keywords FROM messages WHERE folder = ? ORDER BY uid", (folder_id,)
    )


def info_rows_of(conn: sqlite3.Connection, folder_id: int, uids: Iterable[int]) -> list[tuple]:
    """Info rows of the given UIDs that exist, in UID order."""
    wanted = sorted(set(uids))
    if len(wanted) > 20 * CHUNK:  # most of a big folder: one scan beats many lookups
        keep = set(wanted)
        return [row for row in info_rows(conn, folder_id) if row[0] in keep]
    rows: list[tuple] = []
    for part in chunks(wanted):
        marks, params = in_list(part)
        query = f"{_INFO} WHERE folder = ? AND uid IN ({marks}) ORDER BY uid"
        rows.extend(conn.execute(query, (folder_id, *params)))
    return rows


def expunged_since(conn: sqlite3.Connection, folder_id: int, modseq: int) -> list[int]:
    query = "SELECT uid FROM expunged WHERE folder = ? AND modseq > ? ORDER BY uid"
    return [uid for (uid,) in conn.execute(query, (folder_id, modseq))]


def counts(conn: sqlite3.Connection, folder_id: int) -> tuple[int, int, int, int | None]:
    """(messages, total size, unseen, first unseen UID); the unseen ones via their index."""
    count, size = conn.execute(
        "SELECT count(*), coalesce(sum(size), 0) FROM messages WHERE folder = ?", (folder_id,)
    ).fetchone()
    unseen, first = conn.execute(
        "SELECT count(*), min(uid) FROM messages WHERE folder = ? AND flags & 1 = 0",
        (folder_id,),
    ).fetchone()
    return count, size, unseen, first


def first_unseen(conn: sqlite3.Connection, folder_id: int) -> int | None:
    query = "SELECT min(uid) FROM messages WHERE folder = ? AND flags & 1 = 0"
    return conn.execute(query, (folder_id,)).fetchone()[0]
