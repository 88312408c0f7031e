"""The SQLite side of the mail index: schema, connections, transactions and row helpers.

One database per user at the Maildir root (``mailstead-index.sqlite3``), in WAL mode so that
readers in other threads and processes never wait for a writer.  It is a cache: a missing,
corrupt or old-schema file is set aside and rebuilt from the Maildir and the uidlists.
``synchronous=NORMAL`` is enough for a cache: a power cut may lose the last commits, which
the next sync redoes from the file names (see index.py for why MODSEQs stay safe).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

DB_NAME = "mailstead-index.sqlite3"
SCHEMA_VERSION = 3

# Another process (the admin CLI) or another folder's writer may hold the write lock for a
# moment; SQLite's busy handler waits this long before giving up with "database is locked".
BUSY_TIMEOUT = 30.0

# WAL pages after which a commit checkpoints (SQLite's default; see write_txn).
AUTOCHECKPOINT = 1000
# Parameters per "IN (...)" query; SQLite's default limit is 32766 since 3.32.
CHUNK = 900
# Rows from which an insert into an empty table builds the indexes afterwards (insert_rows).
BULK_ROWS = 10_000
# Page cache per connection (PRAGMA cache_size: negative is KiB), and for a transaction
# that writes a folder's worth of rows: 100,000 messages make some 20 MiB of pages.
CACHE = -512
BIG_CACHE = -65536

_TABLES = ("folders", "messages", "expunged", "cache", "fields")
_SCHEMA = (
    # new_/cur_recheck: 0 = the recorded mtime proves the directory unchanged; -1 = list it
    # on every sync (new/ changed too recently to trust its mtime); > 0 = trust the mtime
    # until this time (ns), then list once.  See index_sync.
    # AUTOINCREMENT: a folder dropped and re-created never gets its old id back, so an
    # in-memory file list keyed by (id, version) cannot be taken for the new folder's.
    """CREATE TABLE folders (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL,
        highestmodseq INTEGER NOT NULL,
        modseq_limit INTEGER NOT NULL,
        version INTEGER NOT NULL DEFAULT 0,
        new_mtime INTEGER NOT NULL DEFAULT -1,
        new_recheck INTEGER NOT NULL DEFAULT -1,
        cur_mtime INTEGER NOT NULL DEFAULT -1,
        cur_recheck INTEGER NOT NULL DEFAULT -1)""",
    # internal_date NULL: not read yet.  A sync takes no stat() of a file whose name gives
    # its size; the date (its mtime) is read when a command needs it (schema 3, index_dates).
    """CREATE TABLE messages (
        folder INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        flags INTEGER NOT NULL,
        keywords TEXT NOT NULL,
        size INTEGER NOT NULL,
        internal_date INTEGER,
        base TEXT NOT NULL,
        subdir TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (folder, uid)) WITHOUT ROWID""",
    "CREATE UNIQUE INDEX messages_base ON messages (folder, base)",
    "CREATE INDEX messages_modseq ON messages (folder, modseq)",
    # Partial index: STATUS (UNSEEN) and SELECT's first-unseen touch only unseen rows.
    "CREATE INDEX messages_unseen ON messages (folder, uid) WHERE flags & 1 = 0",
    # Tombstones: which UIDs went when (QRESYNC's VANISHED), and never to reuse them.
    """CREATE TABLE expunged (
        folder INTEGER NOT NULL, uid INTEGER NOT NULL, modseq INTEGER NOT NULL,
        PRIMARY KEY (folder, uid)) WITHOUT ROWID""",
    "CREATE INDEX expunged_modseq ON expunged (folder, modseq)",
    # Blobs the IMAP layer derives from a message (ENVELOPE, BODYSTRUCTURE); apart from
    # messages so that listing a folder never pages through them.
    """CREATE TABLE cache (
        folder INTEGER NOT NULL, uid INTEGER NOT NULL, kind TEXT NOT NULL, value BLOB,
        PRIMARY KEY (folder, uid, kind)) WITHOUT ROWID""",
    # Header field values the IMAP layer searched (decoded), kept by field so that a search
    # of a whole folder reads one range of short rows (schema 2).
    """CREATE TABLE fields (
        folder INTEGER NOT NULL, name TEXT NOT NULL, uid INTEGER NOT NULL, value BLOB NOT NULL,
        PRIMARY KEY (folder, name, uid)) WITHOUT ROWID""",
    "CREATE INDEX fields_uid ON fields (folder, uid)",
)


class FolderRow(NamedTuple):
    id: int
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    modseq_limit: int
    version: int
    new_mtime: int
    new_recheck: int
    cur_mtime: int
    cur_recheck: int


class MsgRow(NamedTuple):
    uid: int
    modseq: int
    flags: int
    keywords: str
    size: int
    internal_date: int | None  # None: not read from the file yet
    base: str
    subdir: str
    name: str


FOLDER_COLUMNS = ", ".join(FolderRow._fields)
MSG_COLUMNS = ", ".join(MsgRow._fields)


def connect(path: Path) -> sqlite3.Connection:
    # check_same_thread=False: MailboxIndex lends a connection to one thread at a time, not
    # always the one that opened it, and close() may run in yet another.
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False,
        cached_statements=32,
    )
    conn.execute("PRAGMA synchronous=NORMAL")
    # Reads of a 100k-message folder go through the page cache shared by all connections.
    conn.execute("PRAGMA mmap_size=268435456")
    # With reads mapped, each connection's private page cache only holds pages being written:
    # 512 KiB rather than SQLite's 2 MiB default, as there are a few connections per user
    # (hundreds on a busy server), each of which would grow its own to the limit.
    conn.execute(f"PRAGMA cache_size={CACHE}")
    return conn


@contextmanager
def write_txn(conn: sqlite3.Connection, big: bool = False,
              checkpoint: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: take the write lock up front, never upgrade mid-way.

    ``big``: the transaction writes a folder's worth of rows (a first sync).  Its pages
    would not fit the small page cache (``connect``), so SQLite would spill them to the WAL
    as it goes and read them back to build the indexes: the cache grows for the
    transaction, and shrinks back (freeing the pages) after it.

    ``checkpoint=False`` leaves the WAL as the COMMIT wrote it even when it has grown past
    SQLite's autocheckpoint size, for the caller to ``checkpoint()`` off its reply path: a
    STORE on 30,000 rows writes 16 MB, which the checkpoint copies into the database file
    and syncs, 40 ms more.  Left undone, the next commit of any connection does it.
    """
    if big:
        conn.execute(f"PRAGMA cache_size={BIG_CACHE}")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if checkpoint:
            conn.execute("COMMIT")
            return
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            conn.execute("COMMIT")
        finally:
            conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT}")
    finally:
        if big:
            conn.execute(f"PRAGMA cache_size={CACHE}")


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the database file as far as no reader still needs it (PASSIVE:
    waits for nobody), so that reads find their pages in the mapped file again."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


@contextmanager
def read_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One snapshot for several SELECTs (WAL: never blocks, never blocked)."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def prepare(path: Path, check: bool = True) -> bool:
    """Make ``path`` a usable index; True if it was (re)created empty.

    A file SQLite cannot read, that fails ``PRAGMA quick_check`` or has another schema
    version is set aside as ``<name>.corrupt`` (kept for a post-mortem) and replaced.
    """
    try:
        return _prepare(path, check)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError):
            raise  # "database is locked", I/O errors: not a reason to throw the index away
        set_aside(path)
        return _prepare(path, check)


def set_aside(path: Path) -> None:
    os.replace(path, path.with_name(path.name + ".corrupt"))
    for suffix in ("-wal", "-shm"):
        # The journal belongs to the old file; next to a new one SQLite would misapply it.
        try:
            os.unlink(path.with_name(path.name + suffix))
        except FileNotFoundError:
            pass


def _prepare(path: Path, check: bool) -> bool:
    try:
        # Created by us first so that it is 0600 whatever the umask; SQLite gives its
        # -wal and -shm files the same permissions.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass
    conn = connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            if check:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {result}")
            return False
        with write_txn(conn):
            if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return False  # another process created it meanwhile
            for table in _TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return True
    finally:
        conn.close()


def chunks(items: Sequence, size: int = CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def in_list(part: Sequence[int]) -> tuple[str, tuple[int, ...]]:
    """``?`` marks and parameters for ``IN (...)``, padded (with a repeat of the last value)
    to a power of two, at most CHUNK.  Every distinct SQL text stays in each connection's
    statement cache (32 of them, and there are a few connections per user): one text
    per list length grew the server's heap for as long as it ran (found by the soak test)."""
    size = min(CHUNK, 1 << max(len(part) - 1, 0).bit_length())
    params = (*part, *(part[-1:] * (size - len(part))))
    return ",".join("?" * size), params


def get_folder(conn: sqlite3.Connection, name: str) -> FolderRow | None:
    row = conn.execute(f"SELECT {FOLDER_COLUMNS} FROM folders WHERE name = ?", (name,)).fetchone()
    return FolderRow(*row) if row else None


def folder_by_id(conn: sqlite3.Connection, folder_id: int) -> FolderRow:
    row = conn.execute(f"SELECT {FOLDER_COLUMNS} FROM folders WHERE id = ?", (folder_id,))
    return FolderRow(*row.fetchone())


def drop_folder(conn: sqlite3.Connection, folder_id: int) -> None:
    for table in ("messages", "expunged", "cache", "fields"):
        conn.execute(f"DELETE FROM {table} WHERE folder = ?", (folder_id,))
    conn.execute("DELETE FROM folders WHERE id = ?", (folder_id,))


def create_folder(
    conn: sqlite3.Connection, name: str, uidvalidity: int, uidnext: int, modseq: int
) -> None:
    conn.execute(
        "INSERT INTO folders (name, uidvalidity, uidnext, highestmodseq, modseq_limit)"
        " VALUES (?, ?, ?, ?, ?)",
        (name, uidvalidity, uidnext, modseq, modseq),
    )


_FOLDER_UPDATABLE = frozenset(FolderRow._fields) - {"id", "name", "uidvalidity"}


def update_folder(conn: sqlite3.Connection, folder_id: int, **values: int) -> None:
    assert values.keys() <= _FOLDER_UPDATABLE, values.keys() - _FOLDER_UPDATABLE
    sets = ", ".join(f"{column} = ?" for column in values)
    conn.execute(f"UPDATE folders SET {sets} WHERE id = ?", (*values.values(), folder_id))


def message_rows(
    conn: sqlite3.Connection, folder_id: int, uids: Iterable[int], flags_unlike: str = ""
) -> list[MsgRow]:
    """Rows of the given UIDs that exist, in UID order. ``flags_unlike`` ("add:BITS" or
    "remove:BITS") leaves out rows that adding or removing those flag bits would not change
    (in SQLite, on a scan of a big folder: STORE 1:* +FLAGS \\Seen reads only the unseen)."""
    keep = set(uids)
    make = MsgRow._make  # from the row as it is, without unpacking it into nine arguments
    if len(keep) == 1:
        # A client opening a message (FETCH n BODY.PEEK[], on the event loop): one row by
        # its key, without sorting, chunking and padding an IN list (a third of the cost).
        return list(map(make, conn.execute(_ONE_ROW, (folder_id, *keep))))
    query = f"SELECT {MSG_COLUMNS} FROM messages WHERE folder = ?"
    if len(keep) > 20 * CHUNK:  # most of a big folder: one scan beats many lookups
        params: tuple = (folder_id,)
        if flags_unlike:
            mode, bits = flags_unlike.split(":")
            query += " AND flags & ? != ?" if mode == "add" else " AND flags & ? != 0"
            params += (int(bits), int(bits)) if mode == "add" else (int(bits),)
        rows = conn.execute(query + " ORDER BY uid", params)
        return [make(row) for row in rows if row[0] in keep]
    result: list[MsgRow] = []
    for part in chunks(sorted(keep)):
        marks, params = in_list(part)
        cursor = conn.execute(f"{query} AND uid IN ({marks}) ORDER BY uid", (folder_id, *params))
        result.extend(map(make, cursor))
    return result


_ONE_ROW = f"SELECT {MSG_COLUMNS} FROM messages WHERE folder = ? AND uid = ?"


def file_names(conn: sqlite3.Connection, folder_id: int, uids: Iterable[int]) -> list[tuple]:
    """(uid, subdir, name) of the given UIDs that exist."""
    rows: list[tuple] = []
    for part in chunks(sorted(set(uids))):
        marks, params = in_list(part)
        query = f"SELECT uid, subdir, name FROM messages WHERE folder = ? AND uid IN ({marks})"
        rows.extend(conn.execute(query, (folder_id, *params)))
    return rows


def update_files(conn: sqlite3.Connection, folder_id: int, rows: Iterable[MsgRow]) -> None:
    """Store new flags, keywords, modseq and file name for existing rows."""
    conn.executemany(
        "UPDATE messages SET modseq = ?, flags = ?, keywords = ?, subdir = ?, name = ?"
        " WHERE folder = ? AND uid = ?",
        ((r.modseq, r.flags, r.keywords, r.subdir, r.name, folder_id, r.uid) for r in rows),
    )


def update_flags(
    conn: sqlite3.Connection, folder_id: int, modseq: int, rows: Iterable[MsgRow]
) -> None:
    """``update_files`` for rows whose keywords and subdir are what they were: only their
    modseq, flags and name are written."""
    conn.executemany(
        "UPDATE messages SET modseq = ?, flags = ?, name = ? WHERE folder = ? AND uid = ?",
        [(modseq, r.flags, r.name, folder_id, r.uid) for r in rows],
    )


def delete_messages(
    conn: sqlite3.Connection, folder_id: int, uids: Sequence[int], modseq: int
) -> None:
    """Remove messages, their cached blobs, and leave tombstones at ``modseq``."""
    params = [(folder_id, uid) for uid in uids]
    conn.executemany("DELETE FROM messages WHERE folder = ? AND uid = ?", params)
    conn.executemany("DELETE FROM cache WHERE folder = ? AND uid = ?", params)
    conn.executemany("DELETE FROM fields WHERE folder = ? AND uid = ?", params)
    conn.executemany(
        "INSERT OR REPLACE INTO expunged (folder, uid, modseq) VALUES (?, ?, ?)",
        [(folder_id, uid, modseq) for uid in uids],
    )


def uid_retired(conn: sqlite3.Connection, folder_id: int, uid: int) -> bool:
    """True if ``uid`` is in use by a message or was expunged: it must not be given again."""
    query = (
        "SELECT 1 FROM messages WHERE folder = ?1 AND uid = ?2"
        " UNION ALL SELECT 1 FROM expunged WHERE folder = ?1 AND uid = ?2 LIMIT 1"
    )
    return conn.execute(query, (folder_id, uid)).fetchone() is not None
