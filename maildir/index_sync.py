"""Bringing a folder's index up to date with its ``new/`` and ``cur/`` directories.

Cost model.  A directory is listed only when its mtime (ns) differs from the one recorded at
the last sync, so an unchanged folder costs two stat() calls and one SELECT.  A listing is
compared by file name with an in-memory copy of the folder's rows (``KnownFiles``), so only
names that appeared or vanished are parsed.  Files are not stat()ed: the listing tells
regular files from the rest, names give sizes, and internal dates are read later, when a
command asks (index_dates); message bodies are never read.

When an mtime can be trusted.  Directory mtimes have a granularity (a clock tick on older
kernels, a second on some filesystems), so a change in the same tick as our look leaves
the mtime as we recorded it.  Dovecot's answer (maildir-sync.c, MAILDIR_SYNC_SECS) is ours:
an mtime less than ``dirty_window`` older than the moment we looked is not fully trusted.
``new/`` is then listed again on every sync until it has been quiet that long
(``new_recheck`` = -1): deliveries must show at once, and new/ is short since we empty it.
``cur/``, which can hold 100,000 names, is trusted until ``dirty_window`` has passed and then
listed once more (``cur_recheck`` = that time).  After our own renames in ``cur/`` (STORE,
new/ -> cur/, EXPUNGE) we re-stat it and do the same, or every STORE would cost a listing.
So a change another program makes in ``cur/`` within the same clock tick as an earlier
change can show up to ``dirty_window`` late; everything else shows up at the next sync.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from maildir import gcpause, index_insert
from maildir import index_sql as sql
from maildir.index_adds import (
    BULK,
    assign_uids,
    bulk_match,
    move_fresh_to_cur,
    new_rows,
)
from maildir.index_state import (
    KnownFiles,
    info_name,
    letters_of_info,
    order_of,
    split_name,
    usual_name,
)
from maildir.keywords import bits_of_letters, join_keywords, split_keywords
from maildir.naming import new_unique_name

if TYPE_CHECKING:
    from maildir.index import FolderIndex

DIRS = ("new", "cur")

# A rename racing our listing makes us look again; more than this in a row means another
# program is busy renaming, and the next sync() will catch up.
MAX_PASSES = 3

# New rows from which a first sync with an ``early`` hook hands out its view before writing
# them: the SELECT of a big folder answers without waiting for the insert (a third of it).
WRITE_BEHIND_ROWS = 2000
# Seconds that write waits at most for its caller to send that answer (a STORE's too).
REPLY_WAIT = 0.5

# The uidlist is line-based UTF-8: a name with a line break or undecodable bytes (surrogate
# escapes) cannot be recorded, so such a file is left alone and never shown over IMAP.
_UNINDEXABLE = re.compile("[\n\r\ud800-\udfff]")



@dataclass
class SyncResult:
    """What one ``sync()`` found in the directories and applied to the index.

    ``added``: UIDs given to messages found for the first time (a session may report these
    as \\Recent); ``expunged``: UIDs whose file is gone; ``changed``: UIDs whose flags another
    program changed (their MODSEQ was bumped).  All in UID order.
    """

    added: list[int] = field(default_factory=list)
    expunged: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.expunged or self.changed)

    def merged(self, later: SyncResult) -> SyncResult:
        """This result followed by ``later``: a UID expunged later is no longer added or
        changed, and a UID added is not also reported changed."""
        gone = set(later.expunged)
        added = sorted({u for u in self.added if u not in gone} | set(later.added))
        expunged = sorted((set(self.expunged) | gone) - set(self.added))
        new = set(added)
        changed = sorted({u for u in (*self.changed, *later.changed) if u not in gone | new})
        return SyncResult(added, expunged, changed)


def fresh(mtime_ns: int, recorded: int, recheck: int, now_ns: int) -> bool:
    """True if a directory with ``mtime_ns`` now is known to be as we last listed it."""
    if mtime_ns != recorded:
        return False
    return recheck == 0 or (recheck > 0 and now_ns < recheck)


def dir_fresh(fi: FolderIndex, row: sql.FolderRow, subdir: str, now_ns: int) -> bool:
    # Paths built once per folder (``_subdir_paths``): this runs at the end of every command.
    mtime = os.stat(fi._subdir_paths[subdir == "cur"]).st_mtime_ns
    return fresh(mtime, getattr(row, f"{subdir}_mtime"), getattr(row, f"{subdir}_recheck"), now_ns)


def own_change_record(fi: FolderIndex, pending: int) -> dict[str, int]:
    """Folder columns trusting ``cur/`` as we just changed it, until the window passes.

    Only for a ``cur/`` that was fresh before our change (the caller checks).  ``pending``
    is the recheck time already set, if any: it is kept, not pushed back, so that a busy
    session cannot put off the look that catches others' same-tick changes forever.
    """
    now = time.time_ns()
    return {
        "cur_mtime": os.stat(fi.directory / "cur").st_mtime_ns,
        "cur_recheck": pending if pending > now else now + fi._window_ns,
    }


def sync_folder(fi: FolderIndex, full: bool = False, early=None) -> SyncResult:
    """``early(uidvalidity, modseq, uids, bits, keywords)``: called by a first sync that
    inserts WRITE_BEHIND_ROWS or more, before it writes them (see ``_Pass._apply``)."""
    conn = fi._conn()
    if not full:
        # Fast path, without the lock: an unchanged folder is two stats and one SELECT.
        row = fi._row(conn)
        now = time.time_ns()
        if all(dir_fresh(fi, row, d, now) for d in DIRS):
            return SyncResult()
    result = SyncResult()
    with fi._writing():
        for _ in range(MAX_PASSES):
            row = fi._row(conn)
            now = time.time_ns()
            stats = {d: os.stat(fi.directory / d) for d in DIRS}
            todo = [
                d
                for d in DIRS
                if full
                or not fresh(
                    stats[d].st_mtime_ns,
                    getattr(row, f"{d}_mtime"),
                    getattr(row, f"{d}_recheck"),
                    now,
                )
            ]
            if not todo:
                break
            raced = _Pass(fi, conn, row, now, stats, early).run(todo, result)
            if not raced:
                break
            full = True  # a file moved under us: look at both directories again
    for uids in (result.added, result.expunged, result.changed):
        uids.sort()
    return result


class _Found:
    """A file this pass found under a name the index does not know; ``uid`` None = new.
    ``size`` is RFC822.SIZE as the name gives it (,W= else ,S=), None if it does not."""

    __slots__ = ("uid", "subdir", "name", "size", "letters")

    def __init__(self, uid, subdir, name, size, letters) -> None:
        self.uid, self.subdir, self.name = uid, subdir, name
        self.size, self.letters = size, letters


class _Pass:
    """One listing of the folder's directories, diffed against the index and applied."""

    def __init__(self, fi: FolderIndex, conn, row: sql.FolderRow, now: int, stats,
                 early=None) -> None:
        self.fi, self.conn, self.row, self.now, self.stats = fi, conn, row, now, stats
        self.early = early
        self.known = fi._known_files(conn, row)
        self.raced = False
        self.listed: dict[str, list[str]] = {}
        self.fresh_in_new: list[str] = []  # bases of the ``fresh`` files met in new/
        self.bulk: tuple | None = None  # columns of cur/'s new files, from ``bulk_match``

    def _list(self, subdir: str) -> None:
        # scandir, not listdir: each name comes with its type (d_type), so a directory, FIFO
        # or socket in cur/ never becomes a message, without a stat() per name.  is_file()
        # stats only a symlink (followed, as open() will) or where the filesystem does not
        # give types.
        with os.scandir(self.fi.directory / subdir) as entries:
            self.listed[subdir] = [e.name for e in entries if e.name[0] != "." and e.is_file()]

    def run(self, todo: list[str], result: SyncResult) -> bool:
        for subdir in DIRS:  # new/ first: a message moving to cur/ meanwhile is seen twice
            if subdir in todo:
                self._list(subdir)
        appeared, vanished = self._diff()
        if vanished.get("new") and "cur" not in self.listed:
            # Gone from new/ is usually moved to cur/ by a reader: look there before
            # calling it expunged, even if cur/'s mtime said nothing changed.
            self._list("cur")
            appeared, vanished = self._diff()
        gone: dict[str, int] = {}
        for subdir, names in vanished.items():
            for name in names:
                gone[split_name(name)[0]] = self.known.by_dir[subdir][name]
        with gcpause.paused(sum(map(len, appeared.values()))):
            found, fresh = self._match(appeared, gone)
            touched_cur = self._move_new_to_cur(found, fresh)
            self._apply(found, fresh, gone, self._dir_records(touched_cur), result)
        return self.raced

    def _diff(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        appeared, vanished = {}, {}
        for subdir, names in self.listed.items():
            known = self.known.by_dir[subdir]
            appeared[subdir] = [n for n in names if n not in known] if known else names
            if len(names) - len(appeared[subdir]) != len(known):
                present = set(names)
                vanished[subdir] = [n for n in known if n not in present]
        return appeared, vanished

    def _match(self, appeared, gone: dict[str, int]) -> tuple[dict[str, _Found], dict]:
        """Pair appeared names with known messages by base: renames; the rest are new.

        Returns ``found``, the renames and the files that need care, and ``fresh``, the
        plain new files: base -> ``(base, subdir, name, size, letters, seconds,
        microseconds)``, as ``new_rows`` takes them.  In a first sync that is every file,
        so they are kept as plain tuples, from one regex match each.
        """
        found: dict[str, _Found] = {}
        fresh: dict[str, tuple] = {}
        known_bases = self.known.bases
        for subdir, names in appeared.items():
            if subdir == "cur" and len(names) >= BULK:
                bulk = bulk_match(names)
                if bulk is not None and all(
                    not taken or taken.keys().isdisjoint(bulk[2])
                    for taken in (gone, found, fresh, known_bases)
                ):
                    self.bulk = bulk  # a first sync's cur/: no twins, nothing known
                    continue
            in_new = self.fresh_in_new if subdir == "new" else None
            for name in names:
                match = usual_name(name)
                if match is not None:
                    base, secs, usecs, size, vsize, info = match.groups()
                    if not (base in gone or base in found or base in fresh or base in known_bases):
                        size = int(vsize) if vsize else int(size) if size else None
                        fresh[base] = (base, subdir, name, size, letters_of_info(info),
                                       int(secs) if secs else 0, int(usecs) if usecs else 0)
                        if in_new is not None:
                            in_new.append(base)
                        continue
                self._match_one(subdir, name, gone, found, fresh)
        return found, fresh

    def _match_one(self, subdir: str, name: str, gone, found, fresh) -> None:
        if _UNINDEXABLE.search(name):
            return
        base, size, vsize, letters = split_name(name)
        size = vsize if vsize is not None else size
        entry = _Found(gone.pop(base, None), subdir, name, size, letters)
        if base in fresh:  # a plain new file until now, that has a twin
            _, at, other, other_size, other_letters, _, _ = fresh.pop(base)
            found[base] = _Found(None, at, other, other_size, other_letters)
        holder = found.get(base)
        known = self.known.bases.get(base)
        if holder is not None:
            at = (holder.subdir, holder.name)
        elif known is not None and entry.uid is None:
            at = known[1:]
        else:
            found[base] = entry
            return
        if not os.path.lexists(self.fi.directory / at[0] / at[1]):
            # The other name moved here after we listed its directory.
            entry.uid = holder.uid if holder is not None else known[0]
            found[base] = entry
            return
        # Two files, one base (a copy made with cp -l, or by a careless tool): give
        # this one a new unique name, as Dovecot does, so that each has its UID.
        unique = new_unique_name() + name[len(base) :]
        here = self.fi.directory / subdir
        try:
            os.rename(here / name, here / unique)
        except FileNotFoundError:
            self.raced = True
            return
        entry.name = unique
        found[split_name(unique)[0]] = entry

    def _move_new_to_cur(self, found: dict[str, _Found], fresh: dict[str, tuple]) -> bool:
        """Dovecot moves what it finds in new/ to cur/ when it syncs; so do we."""
        directory = str(self.fi.directory)
        moved, raced = move_fresh_to_cur(directory, fresh, self.fresh_in_new)
        self.raced |= raced
        new, cur = f"{directory}/new/", f"{directory}/cur/"
        for entry in found.values():
            if entry.subdir != "new":
                continue
            target = info_name(entry.name, entry.letters)
            try:
                os.rename(new + entry.name, cur + target)
            except FileNotFoundError:
                self.raced = True  # moved or deleted meanwhile: the next pass finds it
                entry.subdir = None
                continue
            except PermissionError:
                continue  # a read-only folder: index the message where it is
            entry.subdir, entry.name = "cur", target
            moved = True
        return moved

    def _dir_records(self, touched_cur: bool) -> dict[str, int]:
        window = self.fi._window_ns
        values: dict[str, int] = {}
        for subdir in self.listed:
            mtime = self.stats[subdir].st_mtime_ns
            values[f"{subdir}_mtime"] = mtime
            if self.now - mtime >= window:
                values[f"{subdir}_recheck"] = 0
            elif subdir == "new":
                values["new_recheck"] = -1  # deliveries show at once; new/ is short to list
            else:
                values["cur_recheck"] = self.now + window
        if touched_cur:
            pending = values.get("cur_recheck", self.row.cur_recheck)
            values.update(own_change_record(self.fi, pending))
        if self.raced:
            values.update(new_recheck=-1, cur_recheck=-1)
        return values

    def _apply(self, found, fresh, gone: dict[str, int], dir_values, result: SyncResult) -> None:
        fi, conn, row = self.fi, self.conn, self.row
        fi._keywords.refresh()
        first = not self.known.bases  # an empty folder: the new rows will be all it has
        live = {b: e for b, e in found.items() if e.subdir is not None}
        adds = list(fresh.values())
        adds += [
            (b, e.subdir, e.name, e.size, e.letters, *order_of(b))
            for b, e in live.items()
            if e.uid is None
        ]
        # By column: inserted and remembered by zip(), in C, not row by row.
        rows, raced = new_rows(str(fi.directory), adds, fi._keywords, self.bulk)
        self.raced |= raced
        bases, bits, kws = rows.bases, rows.bits, rows.keywords
        updates, flag_changes = self._updates([e for e in live.values() if e.uid is not None])
        expunged = sorted(gone.values())
        uids = assign_uids(fi, row, self.known, bases) if bases else []
        if not (uids or updates or expunged):
            # Only the directory records, and only if they differ: a sync that found
            # nothing new usually writes nothing.
            values = {k: v for k, v in dir_values.items() if getattr(row, k) != v}
            if values:
                with sql.write_txn(conn):
                    sql.update_folder(conn, row.id, **values)
            return
        fi._built = None
        # A first sync of thousands may answer its caller before the insert (the rows are
        # the slowest part).  The UIDs are durable already (the uidlist), and the MODSEQ
        # once allocated (the uidlist's floor); a crash before the commit makes the next
        # open do this again, with the same UIDs and flags from the same names.
        behind = (self.early is not None and first and not (updates or expunged)
                  and len(uids) >= WRITE_BEHIND_ROWS)
        with ExitStack() as until_committed:  # the door stays shut until known is too
            with sql.write_txn(conn, big=len(uids) >= sql.BULK_ROWS):
                values = dict(dir_values)
                modseq = None
                if uids or flag_changes or expunged:
                    modseq = fi._allocate_modseq(conn, row)
                    values["highestmodseq"] = modseq
                if behind:
                    # Holding SQLite's write lock and the folder's: readers of this process
                    # wait at the door until the commit, other processes at the lock.
                    until_committed.enter_context(fi._rows_behind())
                    sent = self.early(row.uidvalidity, modseq, uids, bits, kws)
                    if sent is not None:
                        sent.wait(REPLY_WAIT)  # the reply first: the insert takes the GIL often
                names, subdirs, sizes, dates = rows.files()
                flagged = set(flag_changes)
                updates = [u._replace(modseq=modseq) if u.uid in flagged else u for u in updates]
                if uids:
                    index_insert.insert_columns(conn, row.id, modseq, {
                        "uid": uids, "flags": bits, "keywords": kws, "size": sizes,
                        "internal_date": dates, "base": bases, "subdir": subdirs, "name": names,
                    })
                sql.update_files(conn, row.id, updates)
                if expunged:
                    sql.delete_messages(conn, row.id, expunged, modseq)
                values.update(uidnext=fi._uidlist.next_uid, version=row.version + 1)
                sql.update_folder(conn, row.id, **values)

            def update_known(known: KnownFiles) -> None:
                for base in gone:
                    known.remove(base)
                for r in updates:
                    known.remove(r.base)
                    known.add(r.uid, r.base, r.subdir, r.name)
                known.add_new(uids, bases, subdirs, names)

            fi._after_commit(row.version, update_known)
            if first and not (updates or expunged or behind):
                fi._built = (row.version + 1, uids, bits, kws)
        result.added.extend(uids)
        result.expunged.extend(expunged)
        result.changed.extend(flag_changes)

    def _updates(self, entries: list[_Found]) -> tuple[list[sql.MsgRow], list[int]]:
        keywords = self.fi._keywords
        old = {r.uid: r for r in sql.message_rows(self.conn, self.row.id, [e.uid for e in entries])}
        updates, flag_changes = [], []
        for entry in entries:
            prev = old.get(entry.uid)
            if prev is None:
                continue
            bits = bits_of_letters(entry.letters)
            # Keywords with a letter follow the file name; those without one (past the 26th)
            # exist only in the index and survive another program's rename.
            kws = keywords.names_of(entry.letters) | {
                k for k in split_keywords(prev.keywords) if not keywords.has_letter(k)
            }
            text = join_keywords(kws)
            if (bits, text) != (prev.flags, prev.keywords):
                flag_changes.append(entry.uid)
            updates.append(
                prev._replace(flags=bits, keywords=text, subdir=entry.subdir, name=entry.name)
            )
        return updates, flag_changes
