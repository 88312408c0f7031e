"""One folder's index (``FolderIndex``): what ``MailboxIndex.folder`` hands out.

The layout, the rules for UIDs and MODSEQs and the locking are described in ``maildir.index``;
the state a folder keeps is in ``index_state``, and ``index_sync``, ``index_ops`` and
``index_copy`` do the work this class's methods name.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from datetime import datetime
from itertools import compress, repeat
from operator import and_, xor
from pathlib import Path
from typing import TYPE_CHECKING

from maildir import gcpause, index_copy, index_ops, index_reads
from maildir import index_sql as sql
from maildir.index_cache import FolderCache, answers_while_writing, lends_connections
from maildir.index_dates import dated, stat_files
from maildir.index_state import FolderState
from maildir.index_sync import SyncResult, fresh, sync_folder
from maildir.index_types import Changes, FirstView, FolderStatus, MessageInfo, View, _infos
from maildir.keywords import SEEN, imap_flags, split_keywords

if TYPE_CHECKING:
    from maildir.index import MailboxIndex


@lends_connections(lambda folder: folder.index, waits=True)
class FolderIndex(FolderCache, FolderState):
    """One folder's index.  Thread-safe; get it from ``MailboxIndex.folder``.

    The state it keeps and its writer lock are in index_state.FolderState; index_sync,
    index_ops and index_copy do the work.
    """

    def __init__(self, index: MailboxIndex, name: str, directory: Path) -> None:
        super().__init__(index, name, directory)
        self._open_lock = threading.Lock()
        self._opened = False
        self._unreported = SyncResult()
        self._subdir_paths = (os.path.join(directory, "new"), os.path.join(directory, "cur"))

    def __repr__(self) -> str:
        return f"<FolderIndex {self.name!r} at {self.directory}>"

    def _ensure_open(self, early=None) -> None:
        """First use in this process: jump HIGHESTMODSEQ to the uidlist's floor (the rule
        above), then sync (``early``: see MailboxIndex.folder)."""
        with self._open_lock:
            if self._opened:
                return
            conn = self._conn()
            with self._writing():
                row = self._row(conn)
                jump = max(row.highestmodseq, self._uidlist.modseq_floor)
                with sql.write_txn(conn):
                    sql.update_folder(conn, row.id, highestmodseq=jump, modseq_limit=jump)
                hook = None if early is None else functools.partial(self._first_view, early)
                sync_folder(self, early=hook)
            self._opened = True

    def _first_view(self, early, uidvalidity: int, modseq: int, uids, bits, keywords):
        """Hand ``early`` the view of a first sync's rows before they are written."""
        view_uids, flags = _built_view(uids, bits, keywords)
        # The smallest UID without \Seen, in C: compress() keeps the UIDs whose bits & SEEN
        # is 0 (xor 1 makes that the true selector).
        unseen = min(compress(uids, map(xor, map(and_, bits, repeat(SEEN)), repeat(SEEN))),
                     default=None)
        view = View(uidvalidity, modseq, self._uidlist.next_uid, view_uids, flags)
        return early(FirstView(self, view, unseen, list(self._keywords.names())))

    # -- syncing -------------------------------------------------------------------------

    def sync(self, full: bool = False) -> SyncResult:
        """Pick up what other programs did in new/ and cur/ (see index_sync for costs).

        ``full`` lists both directories whatever their mtimes say.  Also returns what the
        syncs inside store_flags/expunge/copy/move found since the last call, so that every
        new message is reported as ``added`` to exactly one caller.
        """
        result = sync_folder(self, full)
        if result.expunged or self._unreported:  # else: no lock, the fast path stays fast
            with self._writing():
                if result.expunged:
                    self._maybe_compact(self._conn())
                result = self._unreported.merged(result)
                self._unreported = SyncResult()
        return result

    @answers_while_writing
    def unchanged_since(self, modseq: int) -> bool:
        """True if ``sync()`` now would find nothing and HIGHESTMODSEQ is still ``modseq``:
        a session polling after each command then has nothing to catch up on.  Two stat()
        calls and one SQLite row, no lock: cheap enough to ask before a trip to a thread.
        False while a STORE writes its rows: the sync in a thread waits for them."""
        if self._unreported or self._rows_pending():
            return False
        # Only the five columns it compares, by id: a FolderRow by name costs twice as much,
        # after every command; and not even those while nothing was committed (index_quick).
        # No row (the folder was dropped): refresh() finds out.
        row = self.index.quick_rows.row(self._conn(), _QUICK_CHECK, self._id)
        if row is None or row[0] != modseq:
            return False
        now = time.time_ns()
        new, cur = self._subdir_paths
        return fresh(os.stat(new).st_mtime_ns, row[1], row[2], now) and \
            fresh(os.stat(cur).st_mtime_ns, row[3], row[4], now)

    def _sync_before_change(self, full: bool = False) -> None:
        """Catch up before changing, so a STORE starts from the flags the files have now and
        UNCHANGEDSINCE sees other programs' changes; the next sync() reports the findings."""
        with self._writing():
            self._unreported = self._unreported.merged(sync_folder(self, full))

    # -- reading -------------------------------------------------------------------------

    def messages(self, dates: bool = True) -> list[MessageInfo]:
        """All messages in UID order (one SELECT).  ``dates=False``: internal dates not
        read yet stay None (POP3 and SEARCH without a date key have no use for them, and
        reading them costs a stat() per message the first time; see index_dates)."""
        rows = list(index_reads.info_rows(self._conn(), self._id))
        return _infos(dated(self, rows, 4) if dates else rows)

    def uids(self) -> list[int]:
        query = "SELECT uid FROM messages WHERE folder = ? ORDER BY uid"
        return [uid for (uid,) in self._conn().execute(query, (self._id,))]

    def get(self, uid: int) -> MessageInfo | None:
        infos = _infos(dated(self, list(index_reads.info_rows(self._conn(), self._id, uid=uid)), 4))
        return infos[0] if infos else None

    def get_many(self, uids: Iterable[int], dates: bool = True) -> dict[int, MessageInfo]:
        """The messages of ``uids`` that exist (FETCH): batched queries, not one per UID.
        ``dates=False``: internal dates not read yet stay None, as in ``messages``."""
        rows = index_reads.info_rows_of(self._conn(), self._id, uids)
        return {info.uid: info for info in _infos(dated(self, rows, 4) if dates else rows)}

    @answers_while_writing
    def located(self, uids: Iterable[int], dates: bool = True,
                ) -> tuple[dict[int, MessageInfo], dict[int, str]]:
        """``get_many`` and ``paths`` from one query: a FETCH of a few messages needs both,
        on the event loop, so internal dates read here are not stored, and a message whose
        date cannot be read (its file renamed or deleted by another program since the last
        sync) is left out without syncing: a FETCH in a thread finds it.  ``dates=False``
        (no INTERNALDATE asked for, as when a client opens a message): unknown dates stay
        None and no file is stat()ed.  Nothing while a STORE writes its rows: they are read
        in a thread, once written."""
        directory = str(self.directory)
        infos, paths = {}, {}
        if self._rows_pending():
            return infos, paths
        rows = sql.message_rows(self._conn(), self._id, uids)
        found = {}
        if dates:
            unknown = [(r.uid, r.subdir, r.name) for r in rows if r.internal_date is None]
            found = stat_files(self, unknown) if unknown else {}
        for r in rows:
            date = r.internal_date
            if date is None and dates:
                date = found.get(r.uid)
                if date is None:
                    continue  # not under its indexed name: left to a FETCH in a thread
            infos[r.uid] = MessageInfo(r.uid, imap_flags(r.flags, r.keywords), r.size,
                                       date, r.modseq)
            # A path is stale if that sync found the file renamed; a read finds it again.
            paths[r.uid] = f"{directory}/{r.subdir}/{r.name}"
        return infos, paths

    def changes_since(self, modseq: int) -> Changes:
        """Messages with MODSEQ > ``modseq`` and UIDs expunged after it, with the folder's
        HIGHESTMODSEQ and UIDNEXT, all from one snapshot.  ``changes_since(0)`` is the
        whole folder (SELECT); a session passes its last HIGHESTMODSEQ to poll.  Internal
        dates not read yet are None here: a poll wants flags (see index_dates)."""
        conn = self._conn()
        with sql.read_txn(conn):
            row = sql.folder_by_id(conn, self._id)
            if modseq <= 0:
                messages, expunged = _infos(index_reads.info_rows(conn, self._id)), []
            else:
                messages = _infos(index_reads.info_rows(conn, self._id, since=modseq))
                expunged = index_reads.expunged_since(conn, self._id, modseq)
        return Changes(row.highestmodseq, row.uidnext, messages, expunged, row.uidvalidity)

    def view(self) -> View:
        """What SELECT loads, from one snapshot: UIDs and flags only, without building a
        MessageInfo per message (a third of a second at 100,000)."""
        conn = self._conn()
        built, self._built = self._built, None
        with sql.read_txn(conn):
            row = sql.folder_by_id(conn, self._id)
            if built is not None and built[0] == row.version:
                # The rows the first sync just inserted, still all there are: no need to
                # read 100,000 back (the SELECT after a first sync, a tenth of its time).
                uids, flags = _built_view(*built[1:])
            else:
                uids, flags = array("I"), []
                for uid, bits, keywords in index_reads.flag_rows(conn, self._id):
                    uids.append(uid)
                    flags.append(imap_flags(bits, keywords))
        return View(row.uidvalidity, row.highestmodseq, row.uidnext, uids, flags)

    def status(self) -> FolderStatus:
        # A STATUS (or a POP3 login) that made the first sync will not SELECT: the first
        # sync's columns kept for view() (~6 MB at 100,000) would wait for the next change.
        self._built = None
        conn = self._conn()
        with sql.read_txn(conn):
            row = sql.folder_by_id(conn, self._id)
            count, size, unseen, first = index_reads.counts(conn, self._id)
        return FolderStatus(
            row.uidvalidity, row.uidnext, row.highestmodseq, count, unseen, first, size
        )

    @property
    def uidvalidity(self) -> int:
        return sql.folder_by_id(self._conn(), self._id).uidvalidity

    @property
    def uidnext(self) -> int:
        return sql.folder_by_id(self._conn(), self._id).uidnext

    @property
    def highestmodseq(self) -> int:
        return sql.folder_by_id(self._conn(), self._id).highestmodseq

    @property
    def count(self) -> int:
        query = "SELECT count(*) FROM messages WHERE folder = ?"
        return self._conn().execute(query, (self._id,)).fetchone()[0]

    @property
    def unseen_count(self) -> int:
        return self.status().unseen

    @property
    def first_unseen(self) -> int | None:
        """UID of the first message without \\Seen (the session maps it to a sequence number);
        one step down the unseen index, not the counts of ``status``."""
        return index_reads.first_unseen(self._conn(), self._id)

    @property
    def total_size(self) -> int:
        return self.status().size

    def defined_keywords(self) -> list[str]:
        """The keywords this folder's Maildir keyword file names (a message may use them)."""
        self._keywords.refresh()
        return list(self._keywords.names())

    def keywords(self) -> list[str]:
        """Keywords defined in this folder (for FLAGS / PERMANENTFLAGS), sorted."""
        names = set(self.defined_keywords())
        query = "SELECT DISTINCT keywords FROM messages WHERE folder = ? AND keywords != ''"
        for (text,) in self._conn().execute(query, (self._id,)):
            names.update(split_keywords(text))
        return sorted(names)

    # -- changing (index_ops.py) ---------------------------------------------------------

    def store_flags(
        self,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: str = "replace",
        unchangedsince: int | None = None,
        replied: Callable[[list[MessageInfo], list[int]], threading.Event | None] | None = None,
    ) -> tuple[list[MessageInfo], list[int]]:
        """STORE: ``mode`` is "add", "remove" or "replace".  Returns (messages whose flags
        changed, with their new MODSEQ; UIDs refused by UNCHANGEDSINCE).  Unknown UIDs are
        ignored; ValueError for a flag that cannot be stored (\\Recent, bad keyword).
        Internal dates not read yet are None, as in ``changes_since``.

        ``replied``: for a STORE on thousands, called with the same result once the files
        are renamed, before the rows are written (index_ops.store_flags, also for the Event
        it may return); the return value then comes once they are committed."""
        uids = list(uids)
        answered = []

        def early(changed, failed):
            answered.append((changed, failed))
            return replied(changed, failed)

        with gcpause.paused(len(uids)):
            rows, failed = index_ops.store_flags(self, uids, flags, mode, unchangedsince,
                                                 None if replied is None else early)
            return answered[0] if answered else (_changed(rows), failed)

    def append(
        self, data: bytes, flags: Iterable[str] = (), internal_date: float | datetime | None = None
    ) -> int:
        """APPEND ``data`` (CRLF line ends) with ``flags``; returns its UID (APPENDUID)."""
        return index_ops.append(self, data, flags, internal_date)

    def copy(self, uids: Iterable[int], dest: FolderIndex) -> list[tuple[int, int]]:
        """COPY; returns (source UID, new UID) pairs for COPYUID (RFC 4315)."""
        return index_copy.copy(self, uids, dest)

    def move(self, uids: Iterable[int], dest: FolderIndex) -> list[tuple[int, int]]:
        """MOVE (RFC 6851): renamed into ``dest``; returns (source UID, new UID) pairs."""
        return index_copy.move(self, uids, dest)

    def expunge(self, uids: Iterable[int], only_deleted: bool = False) -> list[int]:
        """Delete these messages (with ``only_deleted``, those of them flagged \\Deleted at
        this moment); returns the UIDs that went."""
        return index_ops.expunge(self, uids, only_deleted)


_QUICK_CHECK = ("SELECT highestmodseq, new_mtime, new_recheck, cur_mtime, cur_recheck"
                " FROM folders WHERE id = ?")


def _changed(rows) -> list[MessageInfo]:
    return [MessageInfo(r.uid, imap_flags(r.flags, r.keywords), r.size, r.internal_date, r.modseq)
            for r in rows]


def _built_view(uids: list[int], bits, keywords) -> tuple[array, list[frozenset[str]]]:
    """View columns from a first sync's rows, which are in name order: that is UID order,
    but for UIDs a rebuilt index took back from the uidlist."""
    if uids != sorted(uids):
        order = sorted(range(len(uids)), key=uids.__getitem__)
        uids = [uids[i] for i in order]
        bits, keywords = [bits[i] for i in order], [keywords[i] for i in order]
    return array("I", uids), list(map(imap_flags, bits, keywords))
