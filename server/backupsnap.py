"""The snapshot of ``mailstead backup``: a frozen copy of a live data dir, made cheaply.

Maildir messages and queued messages are never changed in place (a flag change or a move to
cur/ is a rename, an expunge an unlink), so a hard link freezes each one; SQLite databases
are copied with the online backup API (a copy of the live file could catch a half-written
page or miss the WAL); the small files changed in place (uidlists, ``maildirsize``) and
everything else are copied.

Consistency, per kind of file:

* a Maildir folder is listed new/ before cur/, so a message moving from new/ to cur/ while
  we list is seen at least once; a message is identified by its base name (the uidlist's
  key, unchanged by flag renames) and staged once.  A message renamed between listing and
  linking is found by listing again, after every folder is done, which also catches a
  message MOVEd into a folder already staged, until a listing misses nothing (at most
  50 rounds).  The uidlists are copied after all messages,
  so every staged message whose UID was known has it (IMAP clients keep their caches).
* ``accounts.sqlite3`` is copied first: a mailbox's Maildir is made before its row is
  committed, so every mailbox in the copy has its Maildir in the archive.
* the queue is staged per entry, envelope then message (the spool removes the envelope
  first), so an entry is complete or absent, never an envelope without its message.
* ``mailstead-index.sqlite3`` (per mailbox) is a cache and left out: the server rebuilds it
  from the Maildir and the uidlist with the same UIDVALIDITY and UIDs.  What a rebuild
  loses: keywords past the 26th of a folder (see maildir/keywords.py), and CONDSTORE clients
  refetch flags once.
* ``tmp/`` directories (unfinished writes), the pid file, SQLite's ``-wal``/``-shm`` and
  symbolic links (the restore refuses links) are not backed up; links are reported.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import stat
from pathlib import Path
from urllib.parse import quote

from maildir.index_sql import DB_NAME as INDEX_CACHE
from maildir.naming import parse_name

DATA = "data"
STAGING_PREFIX = ".backup-staging-"
# Not state: the running server's pid file, SQLite's side files (the online backup has
# their content), atomic_write's temp files of a write in progress.
_SKIP_NAMES = frozenset({"mailstead.pid"})
_SKIP_SUFFIXES = ("-wal", "-shm", "-journal")
# A message renamed between our listing and our link is looked for again.  Under a steady
# stream of renames (a big STORE, a POP3 client flagging a whole mailbox) one message can
# be missed a few rounds in a row; the rounds are cheap and stop at the first clean one.
_RELIST_ROUNDS = 50
_READ = 1024 * 1024


def _base(name: str) -> str:
    try:
        return parse_name(name).base
    except ValueError:
        return name


class Snapshot:
    """Stage a frozen copy of ``data_dir`` under ``staging / "data"`` (see the module doc).

    ``listdir`` is the directory listing used for Maildir folders; a test passes one that
    renames messages behind our back, as a running server would.
    """

    def __init__(self, data_dir: Path, staging: Path, exclude: set[str] = frozenset(),
                 listdir=os.listdir):
        self.data_dir = Path(data_dir)
        self.root = Path(staging) / DATA
        self.exclude = exclude
        self.listdir = listdir
        self.skipped: list[tuple[str, str]] = []
        self._folders: list[str] = []
        self._messages: set[tuple[str, str]] = set()
        self._later: list[str] = []
        self._vanished: list[str] = []

    def take(self) -> None:
        self._mkdir("")
        self._tree("")
        for folder in self._folders:
            for _ in range(_RELIST_ROUNDS):
                if not self._messages_of(folder):
                    break
            else:  # never reached here in practice; said rather than lost without a word
                for rel in self._vanished:
                    self.skipped.append((rel, "renamed during every listing"))
        for rel in self._later:
            try:
                self._copy(rel)
            except FileNotFoundError:
                pass  # deleted since we listed it: not part of the state any more

    # -- walking ---------------------------------------------------------------------------

    def _tree(self, rel: str) -> None:
        with os.scandir(self.data_dir / rel) as it:
            # Files before directories: accounts.sqlite3 is copied before any Maildir.
            items = sorted(it, key=lambda e: (e.is_dir(follow_symlinks=False), e.name))
        names = {e.name for e in items if e.is_dir(follow_symlinks=False)}
        is_folder = {"cur", "new"} <= names
        for entry in items:
            sub = f"{rel}/{entry.name}" if rel else entry.name
            if sub in self.exclude:
                continue
            if entry.is_symlink():
                self.skipped.append((sub, "symbolic link"))
            elif entry.is_dir():
                if not rel and entry.name.startswith(STAGING_PREFIX):
                    continue
                self._mkdir(sub)
                if entry.name == "tmp" and (is_folder or rel == "queue"):
                    continue  # unfinished deliveries: the empty directory only
                if is_folder and entry.name in ("cur", "new"):
                    continue  # staged by _messages_of below
                if rel == "queue" and entry.name in ("env", "msg"):
                    continue  # staged by _queue below
                self._tree(sub)
            elif entry.is_file():
                self._file(sub, entry.name)
            else:
                self.skipped.append((sub, "not a regular file"))
        if is_folder:
            self._folders.append(rel)
            self._messages_of(rel)
        if rel == "queue":
            self._queue()

    def _file(self, rel: str, name: str) -> None:
        if name in _SKIP_NAMES or name.endswith(_SKIP_SUFFIXES):
            return
        if name.startswith(".") and name.endswith(".tmp"):
            return  # atomic_write's file of a write in progress
        if name == INDEX_CACHE:
            return  # rebuilt from the Maildir and the uidlist (module doc)
        if name.endswith(".sqlite3"):
            self._sqlite(rel)
        else:
            self._later.append(rel)

    def _messages_of(self, folder: str) -> int:
        """Stage the folder's messages not staged yet; return how many vanished meanwhile."""
        self._vanished = []
        for sub in ("new", "cur"):  # this order: a message moving to cur/ is seen at least once
            path = f"{folder}/{sub}" if folder else sub
            try:
                names = self.listdir(self.data_dir / path)
            except FileNotFoundError:
                continue
            for name in names:
                key = (folder, _base(name))
                if key in self._messages:
                    continue
                try:
                    staged = self._link(f"{path}/{name}")
                except FileNotFoundError:
                    # Renamed (flags, new/ -> cur/) or expunged: listed again.
                    self._vanished.append(f"{path}/{name}")
                    continue
                if staged:
                    self._messages.add(key)
        return len(self._vanished)

    def _queue(self) -> None:
        try:
            names = sorted(os.listdir(self.data_dir / "queue" / "env"))
        except FileNotFoundError:
            return
        for name in names:
            qid = name.removesuffix(".json")
            if qid == name or name.startswith("."):
                continue
            try:
                self._copy(f"queue/env/{name}")
            except FileNotFoundError:
                continue
            try:
                self._link(f"queue/msg/{qid}")
            except FileNotFoundError:
                # Delivered and removed after we read its envelope: drop the entry.
                (self.root / "queue" / "env" / name).unlink()

    # -- staging ---------------------------------------------------------------------------

    def _mkdir(self, rel: str) -> None:
        (self.root / rel).mkdir(mode=0o700, exist_ok=True)

    def _link(self, rel: str) -> bool:
        """Hard-link one never-rewritten file into the staging tree; False if not a file."""
        src, dst = self.data_dir / rel, self.root / rel
        if not stat.S_ISREG(os.lstat(src).st_mode):
            self.skipped.append((rel, "not a regular file"))
            return False
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            return True
        except OSError as err:
            if err.errno == errno.ENOENT:
                raise
            self._copy(rel)  # EPERM (protected_hardlinks), EMLINK, ...: a copy will do
        return True

    def _copy(self, rel: str) -> None:
        src, dst = self.data_dir / rel, self.root / rel
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, "rb") as fin, open(dst, "xb") as fout:
            shutil.copyfileobj(fin, fout, _READ)
            st = os.fstat(fin.fileno())
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _sqlite(self, rel: str) -> None:
        src_path, dst_path = self.data_dir / rel, self.root / rel
        # mode=rw: never create an empty database where one just disappeared.
        src = sqlite3.connect(f"file:{quote(str(src_path))}?mode=rw", uri=True, timeout=30)
        try:
            dst = sqlite3.connect(dst_path)
            try:
                src.backup(dst)
                # One self-contained file in the archive; the server turns WAL on again.
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
        finally:
            src.close()
        os.chmod(dst_path, stat.S_IMODE(os.stat(src_path).st_mode))
