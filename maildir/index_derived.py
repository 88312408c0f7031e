"""Values the IMAP layer derives from messages, kept beside their rows: blobs by kind
(ENVELOPE, BODYSTRUCTURE) in ``cache``, and decoded header fields a search read, by field
name, in ``fields``.  A value is stored only while its message still exists."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from maildir.index_sql import chunks, in_list


def get_cache(
    conn: sqlite3.Connection, folder_id: int, uids: Iterable[int], kind: str
) -> dict[int, bytes | str]:
    result: dict[int, bytes | str] = {}
    for part in chunks(sorted(set(uids))):
        marks, params = in_list(part)
        query = f"SELECT uid, value FROM cache WHERE folder = ? AND kind = ? AND uid IN ({marks})"
        result.update(conn.execute(query, (folder_id, kind, *params)))
    return result


def put_cache(
    conn: sqlite3.Connection, folder_id: int, kind: str, items: Iterable[tuple[int, bytes | str]]
) -> None:
    """Store blobs for UIDs that still exist (a message expunged meanwhile is skipped)."""
    conn.executemany(
        "INSERT OR REPLACE INTO cache (folder, uid, kind, value) SELECT ?1, ?2, ?3, ?4"
        " WHERE EXISTS (SELECT 1 FROM messages WHERE folder = ?1 AND uid = ?2)",
        [(folder_id, uid, kind, value) for uid, value in items],
    )


def get_fields(conn: sqlite3.Connection, folder_id: int, name: str) -> dict[int, bytes]:
    query = "SELECT uid, value FROM fields WHERE folder = ? AND name = ?"
    return dict(conn.execute(query, (folder_id, name)))


def field_uids(conn: sqlite3.Connection, folder_id: int, name: str) -> set[int]:
    query = "SELECT uid FROM fields WHERE folder = ? AND name = ?"
    return {uid for (uid,) in conn.execute(query, (folder_id, name))}


def field_matches(conn: sqlite3.Connection, folder_id: int, name: str, needle: bytes) -> set[int]:
    # instr, not LIKE: a plain substring test, with no wildcard characters to escape; on
    # BLOBs it compares bytes, so NULs inside the values are ordinary bytes.
    query = "SELECT uid FROM fields WHERE folder = ? AND name = ? AND instr(value, ?) > 0"
    return {uid for (uid,) in conn.execute(query, (folder_id, name, needle))}


def put_fields(
    conn: sqlite3.Connection, folder_id: int, name: str, items: Iterable[tuple[int, bytes]]
) -> None:
    """Store values for UIDs that still exist (a message expunged meanwhile is skipped)."""
    conn.executemany(
        "INSERT OR REPLACE INTO fields (folder, name, uid, value) SELECT ?1, ?2, ?3, ?4"
        " WHERE EXISTS (SELECT 1 FROM messages WHERE folder = ?1 AND uid = ?3)",
        [(folder_id, name, uid, value) for uid, value in items],
    )
