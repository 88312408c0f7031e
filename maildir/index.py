"""The per-user mail index for IMAP: UIDs, MODSEQs, flags, sizes and cached blobs, in SQLite.

Layout.  ``MailboxIndex(root)`` opens ``<root>/mailstead-index.sqlite3`` (index_sql.py) and
hands out one ``FolderIndex`` per folder name ("INBOX", "Sent", "Lists.python"); the values
it answers with are in index_types.py, its file paths and cached blobs in index_cache.py.  UIDs come
from each folder's uidlist (uidlist.py), the only durable record of them: delete the SQLite
file and it is rebuilt from the Maildir with the same UIDVALIDITY and UIDs.  Flags live in
the file names (keywords.py), so other Maildir programs see ours and we see theirs.

Keeping up with other writers.  The SMTP delivery threads, mutt or a POP3 server change the
directories without asking us.  ``sync()`` notices (index_sync.py): for an unchanged folder
it costs two stat() calls and one SELECT; otherwise one listing of the changed directory.

Using it from an IMAP session.  SELECT: ``sync()``, then ``changes_since(0)`` (all messages,
HIGHESTMODSEQ and UIDNEXT from one snapshot) and ``status()``.  Keep the UID list and the
HIGHESTMODSEQ you reported.  NOOP, IDLE polls, after commands: ``sync()`` then
``changes_since(last HIGHESTMODSEQ)``: messages with a UID you have not seen are new (EXISTS),
the others changed (FETCH FLAGS), ``expunged`` are EXPUNGE/VANISHED.  This works whoever made
the change: another session, another process, another program.  ``SyncResult.added`` hands
each message found on disk to exactly one ``sync()`` caller in the process: that session may
show it as \\Recent (IMAP4rev1 only).  STORE/EXPUNGE/COPY/MOVE sync before they change
anything; what those syncs find is returned by the next ``sync()``.

MODSEQ (RFC 7162).  Every change to a message's flags, every new message and every expunge
takes the folder's next MODSEQ (one per operation, shared by the messages it touched, which
RFC 7162 allows).  The rule that keeps MODSEQs from ever going backwards, even when the
index is lost or a power cut undoes its last commits:

    Every MODSEQ handed out is <= the uidlist's modseq floor, which is raised (appended and
    fsynced) in blocks of MODSEQ_BLOCK before a MODSEQ above it is used.  Whenever a process
    first opens a folder, and whenever the index is rebuilt, the folder's HIGHESTMODSEQ jumps
    to that floor; rebuilt messages get floor + 1.

So a restart costs up to MODSEQ_BLOCK unused values (MODSEQs are 63-bit) and a rebuild makes
QRESYNC clients refetch flags, which is the right thing after losing them.

Threads and processes.  One ``MailboxIndex`` per user per process, shared by all sessions.
Readers run concurrently (WAL): each public call borrows a SQLite connection from the index's
pool for its duration, so a user has as many connections as calls run at once for them (at
most ``IDLE_CONNECTIONS`` kept between calls), not one per worker thread that ever served
them.  Writers of one folder are
serialised by the uidlist lock: a thread lock plus flock, so the admin CLI in another
process is serialised too.  Writers of different folders only meet at SQLite's short commit.
A big STORE answers before its rows are written (``store_flags(replied=...)``), and so may
the SELECT that makes a big folder's first sync (``folder(early=...)``): until they are, the
folder's public methods wait in every other thread (index_state._rows_behind).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from maildir import index_sql as sql
from maildir.folder_index import FolderIndex
from maildir.folders import INBOX, folder_path, is_inbox
from maildir.index_cache import lends_connections, without_connection
from maildir.index_quick import QuickRows
from maildir.index_state import MODSEQ_BLOCK
from maildir.index_sync import SyncResult
from maildir.index_types import Changes, FolderStatus, MessageGone, MessageInfo

DEFAULT_DIRTY_WINDOW = 2.0  # seconds; see index_sync for what it trades
# Connections an index keeps open between calls. A connection is ~100-600 KiB of SQLite memory
# (page cache, schema, cached statements); keeping one per worker thread per user instead
# made a server with 16 threads and 50 busy users grow towards 800 of them (the soak test's
# RSS rose for as long as it ran). More than this many calls at once for one user open extra
# connections, closed when they are done.
IDLE_CONNECTIONS = 4

__all__ = [
    "MODSEQ_BLOCK",
    "Changes",
    "FolderIndex",
    "FolderStatus",
    "MailboxIndex",
    "MessageGone",
    "MessageInfo",
    "SyncResult",
]


@lends_connections(lambda index: index)
class MailboxIndex:
    """The index of one user's Maildir at ``root``.  Use one per user per process.

    ``dirty_window``: how long a directory mtime is not taken as proof (see index_sync).
    ``check``: run ``PRAGMA quick_check`` on opening (~40 ms for 100,000 messages) so that a
    damaged file is rebuilt rather than failing later.
    """

    def __init__(
        self, root: Path, *, dirty_window: float = DEFAULT_DIRTY_WINDOW, check: bool = True
    ) -> None:
        self.root = Path(root)
        self.db_path = self.root / sql.DB_NAME
        self.dirty_window = dirty_window
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []  # all open: lent and idle
        self._idle: list[sqlite3.Connection] = []
        self._folders: dict[str, FolderIndex] = {}
        # A big write left its WAL checkpoint for checkpoint(), to be run off the reply path.
        self.checkpoint_due = False
        sql.prepare(self.db_path, check=check)
        self.quick_rows = QuickRows(self.db_path)  # for FolderIndex.unchanged_since

    def _conn(self) -> sqlite3.Connection:
        """The connection lent to this thread for the public call in progress."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            raise RuntimeError("index used outside a public call (no connection lent)")
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """Lend this thread a connection from the pool for the block (re-entrant: a call
        inside a call keeps the outer one's connection, so its transaction too)."""
        lent = self.lend()
        if lent is None:
            yield self._local.conn
            return
        try:
            yield lent
        finally:
            self.give_back(lent)

    def lend(self) -> sqlite3.Connection | None:
        """``connection()`` in two halves, for ``lends_connections``, which lends one per
        public call: a generator-based context manager costs as much again as the lending
        (a few microseconds, twice for every small IMAP command).  None when this thread
        has one already; else hand the one returned to ``give_back``."""
        if getattr(self._local, "conn", None) is not None:
            return None
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = sql.connect(self.db_path)
            with self._lock:
                self._conns.append(conn)
        self._local.conn = conn
        return conn

    def give_back(self, conn: sqlite3.Connection) -> None:
        self._local.conn = None
        with self._lock:
            keep = len(self._idle) < IDLE_CONNECTIONS and conn in self._conns
            if keep:
                self._idle.append(conn)
            elif conn in self._conns:
                self._conns.remove(conn)
        if not keep:
            conn.close()

    def folder(self, name: str, early=None) -> FolderIndex:
        """The index of folder ``name``, synced on first use in this process.

        ``early(FirstView)``, if given, is called from inside a first sync that inserts
        thousands of rows, before it writes them: the caller may answer SELECT from it.  It
        may return an Event to set once that answer is sent; the rows wait for it
        (index_sync's write-behind).  Until they are committed, the folder's public methods
        wait in every other thread, as behind a big STORE.

        ValueError for an invalid name, FileNotFoundError if the folder does not exist.
        """
        canonical = INBOX if is_inbox(name) else name
        with self._lock:
            folder = self._folders.get(canonical)
            if folder is None:
                path = folder_path(self.root, canonical)
                if not (path / "cur").is_dir():
                    raise FileNotFoundError(f"no such folder: {name!r}")
                folder = self._folders[canonical] = FolderIndex(self, canonical, path)
        folder._ensure_open(early)
        return folder

    def checkpoint(self) -> None:
        """The WAL checkpoint a big write left undone (``checkpoint_due``), if still due."""
        if self.checkpoint_due:
            self.checkpoint_due = False
            sql.checkpoint(self._conn())

    @without_connection
    def is_current(self, folder: FolderIndex) -> bool:
        """True if ``folder`` is still what ``folder(name)`` gives (not forgotten after an
        IMAP DELETE or RENAME); no disk or database access."""
        with self._lock:
            return self._folders.get(folder.name) is folder

    def forget(self, name: str) -> None:
        """Drop a folder's rows, after IMAP DELETE or RENAME moved its directory away.

        A renamed folder keeps its uidlist (it is inside the directory), so it gets its
        UIDs and UIDVALIDITY back when opened under the new name.
        """
        canonical = INBOX if is_inbox(name) else name
        with self._lock:
            self._folders.pop(canonical, None)
        conn = self._conn()
        with sql.write_txn(conn):
            row = sql.get_folder(conn, canonical)
            if row is not None:
                sql.drop_folder(conn, row.id)

    def close(self) -> None:
        with self._lock:
            conns, self._conns, self._idle = self._conns, [], []
            self._folders.clear()
        for conn in conns:
            conn.close()
        self.quick_rows.close()
        self._local = threading.local()

    def __enter__(self) -> MailboxIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
