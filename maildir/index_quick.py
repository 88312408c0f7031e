"""The folder columns the check after every IMAP command compares (``unchanged_since``),
without a trip through SQLite while nothing has been committed since they were last read.

SQLite's WAL index (the ``-shm`` file next to the database) starts with a header, in two
copies, that every commit rewrites (its change counter and last frame): SQLite's own
connections compare it with their copy to tell whether what they cached is still good
(``walIndexTryHdr``, https://sqlite.org/walformat.html §2.1).  Here the 96 bytes are read
before the query and kept with its row; while they read the same, no commit by any thread or
process came in between, so the row is what the query would give.  Any difference (a commit,
a header being rewritten as it is read, a new ``-shm`` file, noticed within ``RECHECK``)
sends the check to SQLite again.

Why: the query is only microseconds in a loop, but once per command, with the caches cold
after the wait for the client, it cost a fifth of a NOOP's server time on a big folder; the
same goes for the account rows every RCPT reads on an MX worker.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

HEADER = 96  # two copies of the 48-byte WalIndexHdr
RECHECK = 1.0  # seconds between checks that the -shm file open is still the one in use


class QuickRows:
    """One per database file (``MailboxIndex``, ``AccountStore``); thread-safe.  Its user
    keeps a connection to the database open, so the -shm file it reads stays the one in use
    (and one made again is noticed: ``_stamp``)."""

    def __init__(self, db_path: Path) -> None:
        self._path = f"{db_path}-shm"
        self._lock = threading.Lock()
        self._fd: int | None = None  # the -shm file, open for reading
        self._checked = 0.0  # when the open file was last seen to be the one in use
        self._rows: dict[tuple, tuple[bytes, tuple]] = {}

    def row(self, conn: sqlite3.Connection, query: str, *params) -> tuple | None:
        """``conn.execute(query, params).fetchone()``, or the row it gave last time if nothing
        was committed since.  ``query`` reads one row by a key (a folder by its id, a user by
        address).  No row is not remembered: it is asked again.  A connection inside a
        transaction of its own reads through SQLite: what it changed is not committed yet."""
        if conn.in_transaction:
            return conn.execute(query, params).fetchone()
        stamp = self._stamp()  # before the query: a commit after it changes the stamp
        key = (query, params)
        if stamp is not None:
            known = self._rows.get(key)
            if known is not None and known[0] == stamp:
                return known[1]
        row = conn.execute(query, params).fetchone()
        if stamp is not None and row is not None:
            self._rows[key] = (stamp, row)
        return row

    def _stamp(self) -> bytes | None:
        """The header's bytes, or None when they cannot be read (no WAL index yet)."""
        try:
            with self._lock:
                # SQLite removes the -shm file when the last connection closes; one made
                # again is another file, and the old one would never change.  Our user's
                # open connection rules that out, so the file is checked once a second only:
                # every system call here hands the GIL over, and on an MX worker's loop the
                # wait to get it back cost as much as the query it saves.
                now = time.monotonic()
                if self._fd is not None and now >= self._checked + RECHECK:
                    self._checked = now
                    if os.fstat(self._fd).st_nlink == 0:
                        self._close()
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
                    self._checked = now
                data = os.pread(self._fd, HEADER, 0)
        except OSError:
            return None
        return data if len(data) == HEADER else None

    def close(self) -> None:
        with self._lock:
            self._close()
            self._rows.clear()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
