"""Changing a folder through its index: STORE, APPEND and EXPUNGE (COPY, MOVE: index_copy).

Each operation changes the files first and the index second, under the folder's writer lock,
so a crash in between leaves files the next sync() reads back correctly: a renamed file is
a flag change, a missing one an expunge, a new one a new message.  Each takes one new MODSEQ
for all the messages it touched.  A STORE on thousands answers in between (``replied``):
its rows, ~30% of its time, are written after the reply, still under the lock, with the
other readers of this process held at the door until they are in (FolderState._rows_behind).

Another program may rename or delete a file between our SELECT and our rename/link/unlink
(mutt setting \\Seen, a POP3 client deleting).  Then the file is looked up again by its base
name; if it is gone for good the message is skipped, and the next sync() reports it expunged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from contextlib import ExitStack
from datetime import datetime
from typing import TYPE_CHECKING

from maildir import index_insert, quota
from maildir import index_sql as sql
from maildir.deliver import Delivery, deliver
from maildir.flags import with_flags
from maildir.index_state import info_name, locate, split_name
from maildir.index_sync import REPLY_WAIT, dir_fresh, own_change_record
from maildir.index_types import MessageInfo
from maildir.keywords import (
    DELETED,
    bits_of_letters,
    imap_flags,
    join_keywords,
    letters_of_bits,
    parse_flags,
    split_keywords,
)
from maildir.safeio import fsync_dir, unlink_quiet

if TYPE_CHECKING:
    from maildir.index import FolderIndex

MODES = ("add", "remove", "replace")
# Rows from which a STORE leaves the WAL checkpoint to MailboxIndex.checkpoint().
DEFER_CHECKPOINT_ROWS = 2000
# Renamed files from which a STORE may answer before writing its rows (store_flags).
WRITE_BEHIND_ROWS = 2000


def _letters(fi: FolderIndex, bits: int, keywords: Iterable[str]) -> str:
    return letters_of_bits(bits) + fi._keywords.letters_of(keywords)


def _canonical(fi: FolderIndex, keywords: Iterable[str]) -> set[str]:
    fi._keywords.refresh()
    return {fi._keywords.canonical(k) for k in keywords}


def _apply_mode(mode: str, bits: int, kws: set[str], arg_bits: int, arg_kws: set[str]):
    if mode == "add":
        return bits | arg_bits, kws | arg_kws
    if mode == "remove":
        lower = {k.lower() for k in arg_kws}
        return bits & ~arg_bits, {k for k in kws if k.lower() not in lower}
    return arg_bits, set(arg_kws)


def store_flags(fi: FolderIndex, uids, flags, mode, unchangedsince, replied=None):
    """Returns (changed rows with their new MODSEQ, UIDs refused by UNCHANGEDSINCE).

    ``replied(infos, failed)``, if given, is called with that result (as MessageInfos) as
    soon as the files are renamed, when WRITE_BEHIND_ROWS or more were: the caller may
    answer its client then, while the rows are written (see ``_rows_behind``).  It may
    return an Event to set once the answer is sent: the rows wait for it (REPLY_WAIT)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    arg_bits, arg_kws = parse_flags(flags)
    conn = fi._conn()
    with fi._writing():
        fi._sync_before_change()
        row = fi._row(conn)
        cur_fresh = dir_fresh(fi, row, "cur", time.time_ns())
        arg_kws = _canonical(fi, arg_kws)
        system_only = not arg_kws and mode in ("add", "remove")
        rows = sql.message_rows(conn, row.id, uids,
                                f"{mode}:{arg_bits}" if system_only and arg_bits else "")
        # RFC 7162 §3.1.3: a message changed since UNCHANGEDSINCE is not touched and its UID
        # is reported in [MODIFIED].
        failed = [r.uid for r in rows if unchangedsince is not None and r.modseq > unchangedsince]
        skip = set(failed)
        plan = []
        if system_only:
            # Adding or removing system flags only (STORE 1:* +FLAGS \Seen): keywords stay
            # as they are, and rows already as asked are skipped without parsing anything.
            keep = ~arg_bits if mode == "remove" else -1
            add = arg_bits if mode == "add" else 0
            plan = [(r, bits, r.keywords) for r in rows
                    if (bits := (r.flags | add) & keep) != r.flags and r.uid not in skip]
        else:
            for r in rows:
                if r.uid in skip:
                    continue
                bits, kws = _apply_mode(mode, r.flags, set(split_keywords(r.keywords)),
                                        arg_bits, arg_kws)
                text = join_keywords(kws)
                if (bits, text) != (r.flags, r.keywords):
                    plan.append((r, bits, text))
        if not plan:
            return [], failed
        fi._keywords.assign(arg_kws)
        moved = _renames(fi, plan, mode, arg_bits, arg_kws)
        if not moved:
            return [], failed
        # A STORE on thousands leaves the WAL checkpoint to the caller (see write_txn).
        defer = len(moved) >= DEFER_CHECKPOINT_ROWS
        behind = replied is not None and len(moved) >= WRITE_BEHIND_ROWS
        with ExitStack() as until_committed:
            with sql.write_txn(conn, checkpoint=not defer):
                modseq = fi._allocate_modseq(conn, row)
                if behind:
                    # Holding SQLite's write lock already: a reader in a transaction of its
                    # own that waits at the door (_rows_behind) cannot hold up the commit.
                    # The MODSEQ is durable (the uidlist's floor) before the client sees it.
                    until_committed.enter_context(fi._rows_behind())
                    sent = replied([MessageInfo(r.uid, imap_flags(bits, text), r.size,
                                                r.internal_date, modseq)
                                    for r, bits, text, _ in moved], failed)
                    if sent is not None:
                        # Written while the caller renders and sends its reply, the rows
                        # would slow it (executemany takes the GIL for every row: ~50 ms of
                        # a 500 ms STORE on a big folder): they wait for it, for so long.
                        sent.wait(REPLY_WAIT)
                done = [sql.MsgRow(r.uid, modseq, bits, text, r.size, r.internal_date, r.base,
                                   "cur", name) for r, bits, text, name in moved]
                _write_rows(conn, row.id, modseq, done, moved)
                values = {"highestmodseq": modseq, "version": row.version + 1}
                if cur_fresh:
                    values.update(own_change_record(fi, row.cur_recheck))
                sql.update_folder(conn, row.id, **values)
            fi._after_commit(row.version, _moved_rows(done), defer=True)
    if behind and defer:
        sql.checkpoint(conn)  # the reply is out: nothing waits for it now
    else:
        fi.index.checkpoint_due |= defer
    return done, failed


def _write_rows(conn, folder_id: int, modseq: int, done: list[sql.MsgRow], moved) -> None:
    """The index side of the renames, inside the caller's transaction."""
    # Most rows keep their keywords and stay in cur/: for them only flags and name change
    # (three columns to write instead of five, a quarter less time at 30,000).
    same, other = [], []
    for d, (r, _, text, _) in zip(done, moved, strict=True):
        (same if r.keywords == text and r.subdir == "cur" else other).append(d)
    sql.update_flags(conn, folder_id, modseq, same)
    sql.update_files(conn, folder_id, other)


def _renames(fi: FolderIndex, plan, mode, arg_bits, arg_kws) -> list[tuple]:
    """Rename each planned file to its new flags; (row, bits, keywords, new name) of each.

    Relative to descriptors of cur/ and new/ (renameat): the kernel then does not walk the
    folder's path again for each of 30,000 files, and Python encodes names, not paths."""
    infos: dict[tuple[int, str], str] = {}  # a STORE of many gives them few infos
    moved = []
    fds = {subdir: os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
           for subdir, path in zip(("new", "cur"), fi._subdir_paths, strict=True)}
    cur = fds["cur"]
    rename = os.rename
    try:
        for r, bits, text in plan:
            info = infos.get((bits, text))
            if info is None:
                info = infos[bits, text] = info_name("", _letters(fi, bits, split_keywords(text)))
            new_name = r.name.partition(":")[0] + info
            try:
                rename(r.name, new_name, src_dir_fd=fds[r.subdir], dst_dir_fd=cur)
            except FileNotFoundError:
                found = _renamed_elsewhere(fi, r, mode, arg_bits, arg_kws)
                if found is None:
                    continue
                bits, text, new_name = found
            moved.append((r, bits, text, new_name))
    finally:
        for fd in fds.values():
            os.close(fd)
    return moved


def _renamed_elsewhere(fi: FolderIndex, r, mode, arg_bits, arg_kws):
    """(bits, keywords, new name) after renaming a file another program renamed first, or
    None if it is gone (deleted by another program: the next sync() expunges it)."""
    where = locate(fi, r.base)
    if where is None:
        return None
    # Renamed by another program: apply the STORE to the flags it has now.
    letters = split_name(where[1])[3]
    now_kws = fi._keywords.names_of(letters) | {
        k for k in split_keywords(r.keywords) if not fi._keywords.has_letter(k)
    }
    bits, kws = _apply_mode(mode, bits_of_letters(letters), now_kws, arg_bits, arg_kws)
    new_name = info_name(where[1], _letters(fi, bits, kws))
    try:
        os.rename(fi.directory / where[0] / where[1], fi.directory / "cur" / new_name)
    except FileNotFoundError:
        return None
    return bits, join_keywords(kws), new_name


def _moved_rows(rows: list[sql.MsgRow]):
    def update(known) -> None:
        known.moved(rows)

    return update


def _removed_bases(bases: list[str]):
    def update(known) -> None:
        for base in bases:
            known.remove(base)

    return update


def append(fi: FolderIndex, data: bytes, flags, internal_date) -> int:
    bits, kws = parse_flags(flags)
    when = internal_date.timestamp() if isinstance(internal_date, datetime) else internal_date
    conn = fi._conn()
    with fi._writing():
        row = fi._row(conn)
        cur_fresh = dir_fresh(fi, row, "cur", time.time_ns())
        kws = _canonical(fi, kws)
        fi._keywords.assign(kws)
        [path] = deliver([Delivery(fi.directory, [data])])
        base = split_name(path.name)[0]
        target = fi.directory / "cur" / with_flags(path.name, _letters(fi, bits, kws))
        try:
            if when is not None:
                os.utime(path, (when, when))  # RFC 3501 §6.3.11: the date-time argument
            os.rename(path, target)
            fsync_dir(target.parent)  # APPEND's OK promises the message (with its flags)
            mtime = int(os.stat(target).st_mtime)
            [uid] = fi._uidlist.assign([base])
            with sql.write_txn(conn):
                modseq = fi._allocate_modseq(conn, row)
                new = sql.MsgRow(
                    uid,
                    modseq,
                    bits,
                    join_keywords(kws),
                    len(data),
                    mtime,
                    base,
                    "cur",
                    target.name,
                )
                index_insert.insert_messages(conn, row.id, [new])
                values = {
                    "uidnext": fi._uidlist.next_uid,
                    "highestmodseq": modseq,
                    "version": row.version + 1,
                }
                if cur_fresh:
                    values.update(own_change_record(fi, row.cur_recheck))
                sql.update_folder(conn, row.id, **values)
        except BaseException:
            unlink_quiet(path)
            unlink_quiet(target)
            raise
        fi._after_commit(row.version, _moved_rows([new]))
    quota.record(fi.index.root, len(data), 1)
    return uid


def expunge(fi: FolderIndex, uids, only_deleted: bool = False) -> list[int]:
    conn = fi._conn()
    with fi._writing():
        fi._sync_before_change()
        row = fi._row(conn)
        cur_fresh = dir_fresh(fi, row, "cur", time.time_ns())
        rows = sql.message_rows(conn, row.id, uids)
        if only_deleted:
            # Decided under the lock from the flags as they are now, not as some session last
            # saw them: another session may have just cleared \Deleted.
            rows = [r for r in rows if r.flags & DELETED]
        if not rows:
            return []
        touched = set()
        for r in rows:
            try:
                os.unlink(fi.directory / r.subdir / r.name)
                touched.add(r.subdir)
            except FileNotFoundError:
                where = locate(fi, r.base)
                if where is not None:
                    unlink_quiet(fi.directory / where[0] / where[1])
                    touched.add(where[0])
        # One fsync for the whole EXPUNGE, so that a crash cannot bring messages back.
        for subdir in touched:
            fsync_dir(fi.directory / subdir)
        with sql.write_txn(conn):
            modseq = fi._allocate_modseq(conn, row)
            sql.delete_messages(conn, row.id, [r.uid for r in rows], modseq)
            values = {"highestmodseq": modseq, "version": row.version + 1}
            if cur_fresh:
                values.update(own_change_record(fi, row.cur_recheck))
            sql.update_folder(conn, row.id, **values)
        fi._after_commit(row.version, _removed_bases([r.base for r in rows]))
        fi._maybe_compact(conn)
    quota.record(fi.index.root, -sum(r.size for r in rows), -len(rows))
    return [r.uid for r in rows]
