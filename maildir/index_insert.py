"""Inserting message rows: one at a time as messages arrive, or a folder's worth at once
(a first sync), which binds only the columns that differ and builds the secondary indexes
after the rows rather than key by key.  Inside the caller's write transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from itertools import repeat

from maildir import index_sql as sql


def insert_messages(conn: sqlite3.Connection, folder_id: int, rows: Iterable[sql.MsgRow]) -> None:
    insert_rows(conn, ((folder_id, *row) for row in rows))


def insert_rows(conn: sqlite3.Connection, rows: Iterable[tuple], count: int = 0) -> None:
    """Insert ``(folder, *MsgRow)`` tuples, ``count`` of them if the caller knows: a sync
    builds them so, 100,000 at a time.  Inside the caller's write transaction.

    The first sync of a big folder into an empty table (a user's first SELECT) drops the
    table's secondary indexes and builds them again after the insert: SQLite builds an
    index from sorted keys for a fifth less than inserting 100,000 keys one by one.  It is
    all one transaction, so other connections see the indexes throughout, and a crash or
    an error (a duplicate base fails CREATE UNIQUE INDEX as it would fail the insert) rolls
    it all back.  Not with rows there already: rebuilding would cost theirs too.
    """
    _insert(conn, _INSERT, rows, count)


_INSERT = f"INSERT INTO messages (folder, {sql.MSG_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"


def insert_columns(
    conn: sqlite3.Connection, folder_id: int, modseq: int, columns: dict[str, Sequence]
) -> None:
    """Insert new rows of one folder and MODSEQ given by column (every MsgRow field but
    modseq, each a sequence as long as ``columns["uid"]``), as a sync adds them.

    A bulk insert binds only the columns whose values differ: each bound value costs in
    executemany, and a first sync's rows share their folder, MODSEQ, subdir and (not read
    yet) internal date.  The others are written into the statement, which is fine for one
    statement text per big insert, not for every small one (see ``in_list`` on statement
    texts); so a small insert binds them all.
    """
    count = len(columns["uid"])
    fixed: dict[str, object] = {}
    if count >= sql.BULK_ROWS:
        fixed = {"folder": folder_id, "modseq": modseq}
        for name in ("internal_date", "subdir", "keywords"):
            first = columns[name][0]
            if columns[name].count(first) == count:
                fixed[name] = first
    names = ["folder", *sql.MsgRow._fields]
    bound = [n for n in names if n not in fixed]
    values = ", ".join(_literal(fixed[n]) if n in fixed else "?" for n in names)
    statement = f"INSERT INTO messages ({', '.join(names)}) VALUES ({values})"
    constant = {"folder": folder_id, "modseq": modseq}
    rows = zip(*(columns[n] if n in columns else repeat(constant[n], count) for n in bound),
               strict=True)
    _insert(conn, statement, rows, count)


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(int(value))
    return "'" + str(value).replace("'", "''") + "'"


def _insert(conn: sqlite3.Connection, statement: str, rows: Iterable[tuple], count: int) -> None:
    rebuild = count >= sql.BULK_ROWS and conn.execute(_ANY_MESSAGE).fetchone() is None
    dropped = []
    try:
        for name, index in conn.execute(_MESSAGE_INDEXES).fetchall() if rebuild else []:
            conn.execute(f'DROP INDEX "{name}"')
            dropped.append(index)
    except sqlite3.OperationalError:
        pass  # "table is locked": a query of this connection is still reading; insert as is
    conn.executemany(statement, rows)
    for index in dropped:
        conn.execute(index)


# The indexes created with CREATE INDEX (a UNIQUE or PRIMARY KEY constraint's has no SQL).
_MESSAGE_INDEXES = (
    "SELECT name, sql FROM sqlite_master"
    " WHERE type = 'index' AND tbl_name = 'messages' AND sql IS NOT NULL"
)
_ANY_MESSAGE = "SELECT 1 FROM messages LIMIT 1"
