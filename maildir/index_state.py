"""What a folder's index keeps between calls, and the rules for changing it.

``FolderState`` is the part of ``FolderIndex`` that index_sync, index_ops and index_copy
work with: the writer lock (the uidlist's: a thread lock plus flock), the folder row kept
matching the uidlist, MODSEQ allocation under the rule in index.py, the in-memory list of
the folder's file names, and uidlist compaction.  Also the file-name helpers they share.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from itertools import compress
from pathlib import Path
from typing import TYPE_CHECKING

from maildir import index_sql as sql
from maildir.flags import VALID_FLAGS
from maildir.keywords import KeywordMap
from maildir.naming import parse_name
from maildir.uidlist import UidList, UidListCorrupt, allocate_uidvalidity

if TYPE_CHECKING:
    from maildir.index import MailboxIndex

# MODSEQs are reserved in the uidlist this many at a time (see the rule in index.py).
MODSEQ_BLOCK = 1000
# The uidlist is compacted when it holds this many more lines than there are messages.
COMPACT_SLACK = 1000
# Changes to the in-memory file list kept for its next reader (KnownFiles.defer).
MAX_PENDING = 16

# parse_name is general and costs ~6 us per name: 0.6 s of a 100k-message first sync.
# Names of the usual shape (no comma or colon in the unique part) take this regex instead,
# which gives exactly parse_name's answer for them; everything else falls back to it.  It
# also refuses what a uidlist line cannot hold (line breaks, undecodable bytes), so that a
# sync can take a match as indexable without a second look at the name.  Inside the base it
# picks out the two numbers new messages are ordered by (``order_of``), in the same pass.
# ``usual_name(name).groups()`` is (base, seconds digits, microsecond digits, size digits,
# vsize digits, info), None if absent.  Possessive and atomic parts: the base always runs to
# the first comma or colon, so nothing is lost by not backtracking into it, and an unusual
# name (100,000 of them in a folder offlineimap wrote) fails in one pass rather than many.
def _usual(extra: str) -> str:
    nots = extra + "\\n\\r\\ud800-\\udfff"
    return (
        rf"((?=[^,:{nots}])([0-9]*+)(?>\.[^.M,:{nots}]*+M([0-9]*+))?[^,:{nots}]*+)"
        r"(?:,S=(0|[1-9][0-9]{0,18}))?(?:,W=(0|[1-9][0-9]{0,18}))?"
        rf"(?::([^{nots}]*))?"
    )


usual_name = re.compile(_usual("")).fullmatch
# The same for a whole listing at once: ``usual_names("/".join(names) + "/")`` is one tuple
# of groups per name, in order, with "" for None; a name not of the usual shape gets an
# empty base.  No file name holds a "/", so no match runs from one name into the next.
usual_names = re.compile(f"(?:{_usual('/')}|[^/]*)/").findall

# The shape of nearly every name in a big cur/, Dovecot's deliveries and ours: seconds and
# microseconds, ,S= and ,W=, a "2," info.  ``common_names(f"/{'/'.join(names)}/")`` is
# (base, seconds digits, microsecond digits, info after "2,") per name of that shape, as
# ``usual_names`` would split it; a match starts at a "/" and ends before one, so there is
# one match per name only if every name has the shape.  Without the size groups and the
# alternatives it takes half the time, which a first sync spends before its answer; the
# sizes are read after it (``vsizes``).
_NOT = "/\\n\\r\\ud800-\\udfff"
_SIZE = "(?:0|[1-9][0-9]{0,18})"
common_names = re.compile(
    rf"/(([0-9]++)\.[^.M,:{_NOT}]*+M([0-9]++)[^,:{_NOT}]*+),S={_SIZE},W={_SIZE}:2,"
    rf"([^{_NOT}]*+)(?=/)"
).findall
# ,W= of names of that shape: ``vsizes("/" + "/".join(names))``, one per name.
vsizes = re.compile("/[^,/]*+,S=[0-9]++,W=([0-9]++):").findall

# A name's seconds and microseconds as Dovecot reads them (maildir_filename_sort_cmp): the
# leading digits, then "M<digits>" inside the next dot-separated part.
_ORDER = re.compile(r"([0-9]*)(?:\.[^.M:]*M([0-9]*))?")


def order_of(base: str) -> tuple[int, int]:
    """``(seconds, microseconds)`` of a base name: new messages get their UIDs in the order
    of these, then of the base (the delivery order, as Dovecot assigns them: without a
    stat() per file).  0 for a part the name lacks."""
    secs, usecs = _ORDER.match(base).groups()
    return int(secs or 0), int(usecs or 0)


@lru_cache(maxsize=256)
def letters_of_info(info: str | None) -> str:
    """The flag letters of a name's info, as ``parse_name`` reports them (cached: a folder
    has few distinct infos, and this is per file in a first sync)."""
    return "".join(sorted(set(info[2:]))) if info and info.startswith("2,") else ""


def split_name(name: str) -> tuple[str, int | None, int | None, str]:
    """``(base, size, vsize, flags)`` of a file name, as ``parse_name`` gives them."""
    match = usual_name(name)
    if match:
        base, _, _, size, vsize, info = match.groups()
        size, vsize = int(size) if size else None, int(vsize) if vsize else None
        return base, size, vsize, letters_of_info(info)
    parsed = parse_name(name)
    return parsed.base, parsed.size, parsed.vsize, parsed.flags


def info_name(name: str, letters: str) -> str:
    """``name`` with its info set to ``:2,<letters>`` (sorted; letters outside VALID_FLAGS,
    written by some other program, are dropped).  ``flags.with_flags`` without its
    re-validation of a name that came from listdir: hot in syncs and STOREs."""
    kept = "".join(sorted({ch for ch in letters if ch in VALID_FLAGS}))
    return f"{name.partition(':')[0]}:2,{kept}"


class KnownFiles:
    """The file names of one folder's rows, valid while the folder row's id and ``version``
    are what they were when it was loaded (every change to the rows bumps the version)."""

    __slots__ = ("folder_id", "version", "by_dir", "bases", "pending")

    def __init__(self, folder_id: int, version: int) -> None:
        self.folder_id = folder_id
        self.version = version
        self.by_dir: dict[str, dict[str, int]] = {"new": {}, "cur": {}}
        self.bases: dict[str, tuple[int, str, str]] = {}  # base -> (uid, subdir, name)
        self.pending: list[Callable[[KnownFiles], None]] = []  # see defer()

    def defer(self, update: Callable[[KnownFiles], None]) -> None:
        """Keep ``update`` for ``catch_up``, which FolderState runs before the list is read.
        Only a listing of the folder reads it: a STORE on 30,000 messages need not wait for
        60,000 updates of 100,000-entry dictionaries (45 ms).  At most MAX_PENDING are kept,
        so that their rows do not pile up in memory while nothing lists the folder."""
        self.pending.append(update)
        if len(self.pending) >= MAX_PENDING:
            self.catch_up()

    def catch_up(self) -> None:
        pending, self.pending = self.pending, []
        for update in pending:
            update(self)

    @classmethod
    def load(cls, conn, folder_id: int, version: int) -> KnownFiles:
        known = cls(folder_id, version)
        query = "SELECT uid, base, subdir, name FROM messages WHERE folder = ?"
        for uid, base, subdir, name in conn.execute(query, (folder_id,)):
            known.add(uid, base, subdir, name)
        return known

    def add(self, uid: int, base: str, subdir: str, name: str) -> None:
        self.by_dir[subdir][name] = uid
        self.bases[base] = (uid, subdir, name)

    def add_new(
        self, uids: Sequence[int], bases: Sequence[str], subdirs: Sequence[str], names: Sequence
    ) -> None:
        """``remove`` then ``add`` for many, in C (zip, compress) rather than a call each,
        since a first sync brings 100,000.  Their bases are new to the list, so the removes
        usually find nothing: a set intersection tells."""
        for base in self.bases.keys() & bases:
            self.remove(base)
        self.bases.update(zip(bases, zip(uids, subdirs, names, strict=True), strict=True))
        if subdirs.count("cur") == len(subdirs):  # a first sync's: no need to pick them
            self.by_dir["cur"].update(zip(names, uids, strict=True))
            return
        for subdir, files in self.by_dir.items():
            here = list(map(subdir.__eq__, subdirs))
            files.update(zip(compress(names, here), compress(uids, here), strict=True))

    def remove(self, base: str) -> None:
        entry = self.bases.pop(base, None)
        if entry is not None:
            self.by_dir[entry[1]].pop(entry[2], None)

    def moved(self, rows: Iterable) -> None:
        """``remove`` then ``add`` for each renamed row (``uid``, ``base``, ``subdir``,
        ``name``), in one loop: a STORE on a whole folder renames tens of thousands."""
        bases, by_dir = self.bases, self.by_dir
        for r in rows:
            uid, base, subdir, name = r.uid, r.base, r.subdir, r.name
            old = bases.get(base)
            if old is not None:
                by_dir[old[1]].pop(old[2], None)
            by_dir[subdir][name] = uid
            bases[base] = (uid, subdir, name)


def locate(fi: FolderState, base: str) -> tuple[str, str] | None:
    """Where the message with ``base`` is now, after another program renamed it."""
    for subdir in ("cur", "new"):
        for name in os.listdir(fi.directory / subdir):
            if name.startswith(base) and split_name(name)[0] == base:
                return subdir, name
    return None


@contextmanager
def locked_folders(*folders: FolderState) -> Iterator[None]:
    """Writer locks of several folders, always taken in name order: two threads (or
    processes) moving messages A->B and B->A at once must not deadlock."""
    unique = {id(f): f for f in folders}.values()
    with ExitStack() as stack:
        for folder in sorted(unique, key=lambda f: f.name):
            stack.enter_context(folder._writing())
        yield


class FolderState:
    """A folder's uidlist, keyword letters, file list, lock and row; base of FolderIndex."""

    def __init__(self, index: MailboxIndex, name: str, directory: Path) -> None:
        self.index = index
        self.name = name
        self.directory = directory
        self._uidlist = UidList(directory)
        self._keywords = KeywordMap(directory)
        self._known: KnownFiles | None = None
        # (version, uids, flag bits, keywords) of the rows a first sync inserted into an
        # empty folder, for the view() that follows it (FolderIndex.view); taken once.
        self._built: tuple | None = None
        self._window_ns = int(index.dirty_window * 1e9)
        self._id = 0
        # Clear while a STORE writes its rows after its reply (_rows_behind).
        self._rows_written = threading.Event()
        self._rows_written.set()
        self._rows_writer: int | None = None

    def _conn(self) -> sqlite3.Connection:
        return self.index._conn()

    @contextmanager
    def _rows_behind(self) -> Iterator[None]:
        """Inside the writer lock, once the files are renamed: a STORE on thousands answers
        its client, then writes the rows (index_ops.store_flags).  Until they are committed
        every other caller in this process waits at the door of the public methods
        (``_wait_for_rows``), so none reads the flags from before the reply.  Other processes
        do not need the door: the renames changed cur/'s mtime, so their next sync() takes
        the writer lock (flock), which is held until the commit; and a process opening the
        folder takes that lock too."""
        self._rows_writer = threading.get_ident()
        self._rows_written.clear()
        try:
            yield
        finally:
            self._rows_written.set()
            self._rows_writer = None

    def _rows_pending(self) -> bool:
        """True while another thread writes a STORE's rows after its reply."""
        return not self._rows_written.is_set() and self._rows_writer != threading.get_ident()

    def _wait_for_rows(self) -> None:
        if self._rows_pending():
            self._rows_written.wait()

    def _restore_uidlist(self, conn: sqlite3.Connection) -> None:
        """Make the uidlist exist: from the index's UIDs if it has them, else a new one."""
        uidlist = self._uidlist
        try:
            if uidlist.load():
                return
        except UidListCorrupt:
            os.replace(uidlist.path, uidlist.path.with_name(uidlist.path.name + ".corrupt"))
        row = sql.get_folder(conn, self.name)
        if row is None:
            uidlist.create(allocate_uidvalidity(self.index.root))
            return
        entries = conn.execute("SELECT uid, base FROM messages WHERE folder = ?", (row.id,))
        uidlist.create(
            row.uidvalidity,
            next_uid=row.uidnext,
            modseq_floor=max(row.highestmodseq, row.modseq_limit),
            entries=[(uid, base) for uid, base in entries],
        )

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The folder's writer lock, with the folder row matching the uidlist."""
        conn = self._conn()
        with ExitStack() as stack:
            try:
                stack.enter_context(self._uidlist.locked())
            except (FileNotFoundError, UidListCorrupt):
                # Deleted or damaged behind our back: write it back from the index.
                self._restore_uidlist(conn)
                stack.enter_context(self._uidlist.locked())
            self._reconcile(conn)
            yield

    def _reconcile(self, conn: sqlite3.Connection) -> None:
        """Under the lock: (re)create the folder row when it is missing or belongs to
        another UIDVALIDITY; the next sync then rebuilds it from the uidlist's UIDs."""
        uidlist = self._uidlist
        row = sql.get_folder(conn, self.name)
        if row is not None and row.uidvalidity == uidlist.uidvalidity:
            self._id = row.id
            return
        with sql.write_txn(conn):
            if row is not None:
                sql.drop_folder(conn, row.id)
            # uidnext 1 until the first sync: every UID the uidlist has is then kept.
            sql.create_folder(conn, self.name, uidlist.uidvalidity, 1, uidlist.modseq_floor)
        self._known = None
        self._id = sql.get_folder(conn, self.name).id

    def _row(self, conn: sqlite3.Connection) -> sql.FolderRow:
        row = sql.get_folder(conn, self.name)
        if row is None:
            with self._writing():
                row = sql.get_folder(conn, self.name)
        self._id = row.id
        return row

    def _allocate_modseq(self, conn: sqlite3.Connection, row: sql.FolderRow) -> int:
        """The next MODSEQ, inside the caller's write transaction (see the module rule)."""
        modseq = row.highestmodseq + 1
        if modseq > row.modseq_limit:
            limit = modseq + MODSEQ_BLOCK
            self._uidlist.raise_modseq_floor(limit)  # durable before anyone sees modseq
            sql.update_folder(conn, row.id, modseq_limit=limit)
        return modseq

    def _known_files(self, conn: sqlite3.Connection, row: sql.FolderRow) -> KnownFiles:
        known = self._known
        if known is None or (known.folder_id, known.version) != (row.id, row.version):
            self._known = KnownFiles.load(conn, row.id, row.version)
        else:
            known.catch_up()
        return self._known

    def _after_commit(self, version: int, update: Callable[[KnownFiles], None],
                      defer: bool = False) -> None:
        """Apply a committed change to the in-memory file list (``defer``: when it is next
        read, see KnownFiles.defer), or drop the list."""
        known = self._known
        if known is not None and (known.folder_id, known.version) == (self._id, version):
            if defer:
                known.defer(update)
            else:
                known.catch_up()  # in commit order: an expunge after a deferred rename
                update(known)
            known.version = version + 1
        else:
            self._known = None

    def _maybe_compact(self, conn: sqlite3.Connection) -> None:
        """Under the lock: rewrite the uidlist once expunged entries dominate it."""
        live = conn.execute("SELECT count(*) FROM messages WHERE folder = ?", (self._id,))
        if self._uidlist.line_count > 2 * live.fetchone()[0] + COMPACT_SLACK:
            bases = conn.execute("SELECT base FROM messages WHERE folder = ?", (self._id,))
            self._uidlist.compact({base for (base,) in bases})
