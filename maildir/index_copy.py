"""COPY and MOVE between folders of one user, through the index.

COPY (RFC 3501 §6.4.7) hard-links each message under a new unique name: no data is copied
and the internal date stays.  MOVE (RFC 6851) renames it into the other folder, which is
atomic: the message is never in both folders, or in neither.  Both fall back to a durable
copy where links or renames cannot cross (a folder on another filesystem).  As in index_ops,
files change first and the index second, under the writer locks of both folders.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from typing import TYPE_CHECKING

from maildir import index_insert, quota
from maildir import index_sql as sql
from maildir.flags import with_flags
from maildir.index_ops import _canonical, _letters, _moved_rows, _removed_bases, expunge
from maildir.index_state import locate, locked_folders
from maildir.index_sync import dir_fresh, own_change_record
from maildir.keywords import join_keywords, split_keywords
from maildir.naming import new_unique_name
from maildir.safeio import fsync_dir, unlink_quiet

if TYPE_CHECKING:
    from maildir.index import FolderIndex


def _same_index(src: FolderIndex, dest: FolderIndex) -> None:
    if src.index is not dest.index:
        raise ValueError("copy/move only between folders of the same MailboxIndex")


def _link_or_copy(src: FolderIndex, row: sql.MsgRow, target) -> bool:
    """Put the message at ``target``: a hard link (no data copied, same internal date),
    else a durable copy.  False if the source is gone."""
    source = src.directory / row.subdir / row.name
    for attempt in range(2):
        try:
            os.link(source, target)
            return True
        except FileNotFoundError:
            if os.path.lexists(source):
                raise  # the destination folder is gone, not the message
            where = locate(src, row.base) if attempt == 0 else None
            if where is None:
                return False
            source = src.directory / where[0] / where[1]
        except OSError as exc:
            # EXDEV: folder on another filesystem; EPERM/ENOTSUP: no hard links there;
            # EMLINK: too many links to one file.
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            tmp = target.parent.parent / "tmp" / new_unique_name()
            try:
                shutil.copy2(source, tmp)  # copy2 keeps the mtime: the internal date
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.rename(tmp, target)
            except BaseException:
                unlink_quiet(tmp)
                raise
            return True
    return False


def copy(src: FolderIndex, uids, dest: FolderIndex) -> list[tuple[int, int]]:
    _same_index(src, dest)
    conn = src._conn()
    with locked_folders(src, dest):
        src._sync_before_change()
        srow, drow = src._row(conn), dest._row(conn)
        d_fresh = dir_fresh(dest, drow, "cur", time.time_ns())
        rows = sql.message_rows(conn, srow.id, uids)
        made: list[tuple[sql.MsgRow, sql.MsgRow]] = []
        try:
            kws_of = {r.uid: _canonical(dest, split_keywords(r.keywords)) for r in rows}
            dest._keywords.assign(set().union(*kws_of.values()))
            for r in rows:
                base = new_unique_name()
                head = r.name.partition(":")[0]
                name = with_flags(
                    base + head[len(r.base) :], _letters(dest, r.flags, kws_of[r.uid])
                )
                if _link_or_copy(src, r, dest.directory / "cur" / name):
                    kws = join_keywords(kws_of[r.uid])
                    made.append((r, r._replace(keywords=kws, base=base, subdir="cur", name=name)))
            if not made:
                return []
            fsync_dir(dest.directory / "cur")
            new_uids = dest._uidlist.assign([m.base for _, m in made])
            with sql.write_txn(conn):
                modseq = dest._allocate_modseq(conn, drow)
                made = [
                    (r, m._replace(uid=u, modseq=modseq))
                    for (r, m), u in zip(made, new_uids, strict=True)
                ]
                index_insert.insert_messages(conn, drow.id, [m for _, m in made])
                # A copy has the same bytes, so the same ENVELOPE and BODYSTRUCTURE.
                conn.executemany(
                    "INSERT OR REPLACE INTO cache (folder, uid, kind, value)"
                    " SELECT ?, ?, kind, value FROM cache WHERE folder = ? AND uid = ?",
                    [(drow.id, m.uid, srow.id, r.uid) for r, m in made],
                )
                values = {
                    "uidnext": dest._uidlist.next_uid,
                    "highestmodseq": modseq,
                    "version": drow.version + 1,
                }
                if d_fresh:
                    values.update(own_change_record(dest, drow.cur_recheck))
                sql.update_folder(conn, drow.id, **values)
        except BaseException:
            # RFC 3501 §6.4.7: a failed COPY leaves the destination as it was.
            for _, m in made:
                unlink_quiet(dest.directory / "cur" / m.name)
            raise
        dest._after_commit(drow.version, _moved_rows([m for _, m in made]))
    quota.record(src.index.root, sum(m.size for _, m in made), len(made))
    return [(r.uid, m.uid) for r, m in made]


def move(src: FolderIndex, uids, dest: FolderIndex) -> list[tuple[int, int]]:
    _same_index(src, dest)
    if src is dest:
        pairs = copy(src, uids, dest)
        expunge(src, [old for old, _ in pairs])
        return pairs
    conn = src._conn()
    with locked_folders(src, dest):
        src._sync_before_change()
        srow, drow = src._row(conn), dest._row(conn)
        now = time.time_ns()
        s_fresh, d_fresh = dir_fresh(src, srow, "cur", now), dir_fresh(dest, drow, "cur", now)
        rows = sql.message_rows(conn, srow.id, uids)
        moved: list[tuple[sql.MsgRow, sql.MsgRow, object]] = []  # (old, new, source path)
        try:
            kws_of = {r.uid: _canonical(dest, split_keywords(r.keywords)) for r in rows}
            dest._keywords.assign(set().union(*kws_of.values()))
            for r in rows:
                # Keep the unique name (rename(2) is atomic: the message is never in both
                # folders or neither) unless dest already knows it from an earlier visit.
                base = r.base if dest._uidlist.get(r.base) is None else new_unique_name()
                head = r.name.partition(":")[0]
                name = with_flags(
                    base + head[len(r.base) :], _letters(dest, r.flags, kws_of[r.uid])
                )
                source = _move_file(src, r, dest.directory / "cur" / name)
                if source is not None:
                    kws = join_keywords(kws_of[r.uid])
                    new = r._replace(keywords=kws, base=base, subdir="cur", name=name)
                    moved.append((r, new, source))
            if not moved:
                return []
            for directory in {dest.directory / "cur", *(s.parent for _, _, s in moved)}:
                fsync_dir(directory)
            new_uids = dest._uidlist.assign([m.base for _, m, _ in moved])
            with sql.write_txn(conn):
                d_modseq = dest._allocate_modseq(conn, drow)
                s_modseq = src._allocate_modseq(conn, srow)
                moved = [
                    (r, m._replace(uid=u, modseq=d_modseq), s)
                    for (r, m, s), u in zip(moved, new_uids, strict=True)
                ]
                index_insert.insert_messages(conn, drow.id, [m for _, m, _ in moved])
                conn.executemany(
                    "UPDATE cache SET folder = ?, uid = ? WHERE folder = ? AND uid = ?",
                    [(drow.id, m.uid, srow.id, r.uid) for r, m, _ in moved],
                )
                sql.delete_messages(conn, srow.id, [r.uid for r, _, _ in moved], s_modseq)
                for fi, row, modseq, fresh in (
                    (dest, drow, d_modseq, d_fresh),
                    (src, srow, s_modseq, s_fresh),
                ):
                    values = {
                        "uidnext": fi._uidlist.next_uid,
                        "highestmodseq": modseq,
                        "version": row.version + 1,
                    }
                    if fresh:
                        values.update(own_change_record(fi, row.cur_recheck))
                    sql.update_folder(conn, row.id, **values)
        except BaseException:
            for _, m, source in moved:  # put them back: a failed MOVE changes nothing
                try:
                    os.rename(dest.directory / "cur" / m.name, source)
                except OSError:
                    pass
            raise
        dest._after_commit(drow.version, _moved_rows([m for _, m, _ in moved]))
        src._after_commit(srow.version, _removed_bases([r.base for r, _, _ in moved]))
        src._maybe_compact(conn)
    return [(r.uid, m.uid) for r, m, _ in moved]


def _move_file(src: FolderIndex, row: sql.MsgRow, target):
    """Rename the message to ``target``; its old path, or None if it is gone."""
    source = src.directory / row.subdir / row.name
    for attempt in range(2):
        try:
            os.rename(source, target)
            return source
        except FileNotFoundError:
            if os.path.lexists(source):
                raise
            where = locate(src, row.base) if attempt == 0 else None
            if where is None:
                return None
            source = src.directory / where[0] / where[1]
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Another filesystem (a folder symlinked elsewhere): copy, then remove.
            if not _link_or_copy(
                src, row._replace(subdir=source.parent.name, name=source.name), target
            ):
                return None
            os.unlink(source)
            return source
    return None
