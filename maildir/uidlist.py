"""The per-folder UID list: the durable source of truth for IMAP UIDs, like ``dovecot-uidlist``.

RFC 3501 §2.3.1.1: a message's UID must never change while UIDVALIDITY stays the same, and
UIDs are handed out in ascending order.  The SQLite index is only a cache; this small file,
``<folder>/mailstead-uidlist``, is what makes UIDs survive the index being deleted.  Format,
UTF-8 lines ending in ``\\n``::

    1 V<uidvalidity> N<next uid> M<modseq floor>     header, written when the file is (re)made
    <uid> <base>                                      appended when a message gets its UID
    M<modseq floor>                                   appended when the floor is raised

``<base>`` is ``parse_name(filename).base``: the file name without ``,S=``/``,W=`` and the
``:2,`` info, so flag renames do not change it.  When a base appears twice the later line
wins (a message that came back after being expunged gets a fresh UID).  The next UID is the
larger of the header's N and the highest UID listed plus one, so compaction can drop lines
without ever letting a UID be reused.  The modseq floor is an upper bound on every MODSEQ the
index has handed out (see index.py for the rule).

Appends are fsynced before the UID is used: a UID a client has seen must survive a crash.  A
crash in the middle of an append leaves a last line without ``\\n``; readers ignore it and the
next writer (holding the lock, so the writer that tore it is gone) truncates it away.

Several processes share the file: changes are made under ``flock`` on it.  ``compact`` and
``create`` replace the file by rename, so a locker re-checks after ``flock`` that its
descriptor still is the file at the path.  Readers need no lock; they read the lines
appended since their last look (the offset is tracked), never the whole file again unless
it was replaced.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from maildir.naming import new_unique_name
from maildir.safeio import fsync_dir, unlink_quiet, write_all

UIDLIST_NAME = "mailstead-uidlist"
FORMAT_VERSION = 1
MAX_UID = 0xFFFFFFFF  # RFC 3501 §9: uniqueid = nz-number, a 32-bit value


# The last UIDVALIDITY handed out in a Maildir, at its root (Dovecot keeps the same in
# dovecot-uidvalidity): a folder deleted and re-created, or whose uidlist and index were both
# lost, within the same second must still get a new value, or clients would take its new
# UID 1 for the old one.
UIDVALIDITY_FILE = "mailstead-uidvalidity"


class UidListCorrupt(ValueError):
    """The file exists but its header cannot be read: it is not ours or it was damaged."""


def new_uidvalidity(previous: int = 0) -> int:
    """A nonzero 32-bit UIDVALIDITY: the clock, as Dovecot does, but above ``previous``.

    Above ``previous`` so that a uidlist lost and recreated within the same second still gets
    a value clients have not seen for this folder.
    """
    value = max(int(time.time()), previous + 1) % (MAX_UID + 1)
    return value or 1


def allocate_uidvalidity(root: Path) -> int:
    """A UIDVALIDITY not handed out before in the Maildir at ``root`` (across processes)."""
    fd = os.open(Path(root) / UIDVALIDITY_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = os.pread(fd, 16, 0).strip()
        # Unreadable (a torn write): the clock alone is still right unless within a second.
        value = new_uidvalidity(int(text) if text.isdigit() else 0)
        # Fixed width, one small write at offset 0: never a mix of old and new digits.
        os.pwrite(fd, b"%010d\n" % value, 0)
        os.fsync(fd)
        return value
    finally:
        os.close(fd)


class UidList:
    """One folder's uidlist, loaded once and then followed by reading only appended lines.

    Thread-safe.  ``locked()`` is also the folder's writer lock for the index: a reentrant
    thread lock plus ``flock`` across processes.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / UIDLIST_NAME
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._depth = 0
        self._clear()

    def _clear(self) -> None:
        self._uidvalidity = 0
        self._header_next = 1
        self._max_uid = 0
        self._floor = 0
        self._uids: dict[str, int] = {}
        self._unmapped: list[tuple[Sequence[str], list[int]]] = []  # see _map()
        self._lines = 0
        self._identity: tuple[int, int] | None = None
        self._offset = 0

    # -- reading -------------------------------------------------------------------------

    @property
    def uidvalidity(self) -> int:
        return self._uidvalidity

    @property
    def next_uid(self) -> int:
        return max(self._header_next, self._max_uid + 1)

    @property
    def modseq_floor(self) -> int:
        return self._floor

    @property
    def line_count(self) -> int:
        """UID lines read, superseded ones included (for deciding when to compact)."""
        return self._lines

    def get(self, base: str) -> int | None:
        with self._mutex:
            return self._map().get(base)

    def items(self) -> dict[str, int]:
        with self._mutex:
            return dict(self._map())

    def _map(self) -> dict[str, int]:
        """base -> UID, with what ``assign`` has written since the last look.  Needs _mutex."""
        while self._unmapped:
            bases, uids = self._unmapped.pop(0)
            self._uids.update(zip(bases, uids, strict=True))
        return self._uids

    def load(self) -> bool:
        """Read the file (or what was appended since the last read); False if it is missing."""
        with self._mutex:
            try:
                self.refresh()
            except FileNotFoundError:
                self._clear()
                return False
            return True

    def refresh(self) -> None:
        """Catch up with the file: nothing if unchanged, the new lines if it grew, all of it
        if it was replaced.  FileNotFoundError if it is gone; UidListCorrupt if unreadable."""
        with self._mutex:
            st = os.stat(self.path)
            identity = (st.st_dev, st.st_ino)
            if identity != self._identity or st.st_size < self._offset:
                self._clear()
                self._read_from(0, identity)
            elif st.st_size > self._offset:
                self._read_from(self._offset, identity)

    def _read_from(self, offset: int, identity: tuple[int, int]) -> None:
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            if (st.st_dev, st.st_ino) != identity:
                # Replaced between our stat and open: read the new file from its start.
                self._clear()
                identity, offset = (st.st_dev, st.st_ino), 0
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # complete lines only; a torn tail is not ours to read
        lines = data[:end].split(b"\n")[:-1]
        if offset == 0:
            if not lines:
                raise UidListCorrupt(f"{self.path}: no complete header line")
            self._parse_header(lines[0])
            lines = lines[1:]
        self._parse_lines(lines)
        self._identity = identity
        self._offset = offset + end

    def _parse_header(self, line: bytes) -> None:
        fields = line.decode("ascii", "replace").split()
        if not fields or fields[0] != str(FORMAT_VERSION):
            raise UidListCorrupt(f"{self.path}: unknown header {line[:80]!r}")
        values = {}
        for field in fields[1:]:
            if field[1:].isdigit():
                values[field[0]] = int(field[1:])
        if not 0 < values.get("V", 0) <= MAX_UID:
            raise UidListCorrupt(f"{self.path}: header without a valid UIDVALIDITY")
        self._uidvalidity = values["V"]
        self._header_next = max(1, values.get("N", 1))
        self._floor = values.get("M", 0)

    def _parse_lines(self, lines: Iterable[bytes]) -> None:
        uids = self._map()
        for line in lines:
            if line[:1] == b"M":
                if line[1:].isdigit():
                    self._floor = max(self._floor, int(line[1:]))
                continue
            uid_text, _, base_bytes = line.partition(b" ")
            # Lines we cannot have written are skipped, not fatal: the cost is that one
            # message gets a new UID, while refusing would make the whole folder unusable.
            if not uid_text.isdigit() or not base_bytes:
                continue
            uid = int(uid_text)
            try:
                base = base_bytes.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if not 0 < uid <= MAX_UID:
                continue
            uids[base] = uid
            self._lines += 1
            if uid > self._max_uid:
                self._max_uid = uid

    # -- creating ------------------------------------------------------------------------

    def create(
        self,
        uidvalidity: int | None = None,
        *,
        previous_uidvalidity: int = 0,
        next_uid: int = 1,
        modseq_floor: int = 0,
        entries: Iterable[tuple[int, str]] = (),
    ) -> bool:
        """Create the file unless it exists; True if this call made it.  Then load it.

        ``uidvalidity`` None makes a new one (above ``previous_uidvalidity``).  ``entries``
        (uid, base) lets the index write back the UIDs it knows when the file was lost.
        The file appears complete or not at all (written aside, then hard-linked into place,
        which fails instead of overwriting when another process was faster).
        """
        with self._mutex:
            value = uidvalidity or new_uidvalidity(previous_uidvalidity)
            data = self._render(value, next_uid, modseq_floor, sorted(entries))
            tmp = self._write_aside(data)
            try:
                os.link(tmp, self.path)
                made = True
            except FileExistsError:
                made = False
            finally:
                unlink_quiet(tmp)
            if made:
                fsync_dir(self.folder)
            self._clear()
            self.refresh()
            return made

    @staticmethod
    def _render(uidvalidity: int, next_uid: int, floor: int, entries: Sequence) -> bytes:
        header = f"{FORMAT_VERSION} V{uidvalidity} N{next_uid} M{floor}\n"
        return (header + "".join(f"{uid} {base}\n" for uid, base in entries)).encode("utf-8")

    def _write_aside(self, data: bytes) -> Path:
        # In the folder's tmp/ when it has one: same filesystem (link/rename stay atomic),
        # invisible to Maildir readers, and cleanup_tmp removes it if we crash right here.
        tmp_dir = self.folder / "tmp"
        tmp = (tmp_dir if tmp_dir.is_dir() else self.folder) / f".{new_unique_name()}.uidlist"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, [data])
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            unlink_quiet(tmp)
            raise
        os.close(fd)
        return tmp

    # -- changing (under the lock) -------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's writer lock (reentrant in one thread) and catch up with the file."""
        with self._mutex:
            if self._depth == 0:
                self._lock_fd = self._flock()
            self._depth += 1
            try:
                self.refresh()
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # closing releases the flock
                    self._lock_fd = None
                if self._depth == 0:
                    # The holder's work is done (a SELECT answered, its rows written), and
                    # other processes need not wait for this: only this process reads it.
                    self._map()

    def _flock(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                st, now = os.fstat(fd), os.stat(self.path)
            except BaseException:
                os.close(fd)
                raise
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                return fd
            os.close(fd)  # replaced while we waited (compacted): lock the new file

    def _require_lock(self) -> int:
        if self._depth == 0 or self._lock_fd is None:
            raise RuntimeError("uidlist changes need locked()")
        return self._lock_fd

    def _append(self, data: bytes) -> None:
        fd = self._require_lock()
        size = os.fstat(fd).st_size
        if size != self._offset:
            # A torn tail from a writer that crashed (we hold the lock, so it is not in
            # progress): cut it off, or our first line would be glued to its fragment.
            os.ftruncate(fd, self._offset)
        write_all(fd, [data])
        os.fsync(fd)
        self._offset += len(data)

    def assign(
        self, bases: Sequence[str], reuse: Callable[[str, int], bool] | None = None
    ) -> list[int]:
        """UIDs for ``bases``, in order; new ones are appended and fsynced.  Needs locked().

        A base already listed keeps its UID when ``reuse(base, uid)`` says so (the index
        rebuilding, or a UID another process assigned just before crashing); otherwise it
        gets a fresh one, since reusing the UID of an expunged message would break
        RFC 3501's strictly ascending UIDs.  ``bases`` must not change afterwards: the
        in-memory map takes them in later (``_map``).
        """
        with self._mutex:
            self._require_lock()
            uids = self._map()
            next_uid = self.next_uid
            # One write and one fsync however many: a first sync brings 100,000.
            if not uids or uids.keys().isdisjoint(bases):
                # The usual case (always, for a folder new to us): all new, so the UIDs and
                # lines are made in C rather than a loop of ours (a tenth of a first sync).
                count = len(bases)
                result = list(range(next_uid, next_uid + count))
                # One format of all lines: no string per line (a first sync's 100,000 cost
                # their weight in cache misses, before the SELECT can answer).
                values: list = [None] * (2 * count)
                values[0::2], values[1::2] = result, bases
                lines = [("%d %s\n" * count) % tuple(values)]
                written = count
                next_uid += count
            else:
                result, lines = [], []
                for base in bases:
                    old = uids.get(base)
                    if old is not None and reuse is not None and reuse(base, old):
                        result.append(old)
                        continue
                    result.append(next_uid)
                    lines.append(f"{next_uid} {base}\n")
                    next_uid += 1
                written = len(lines)
            if next_uid - 1 > MAX_UID:
                raise OverflowError(f"{self.path}: UIDs exhausted; UIDVALIDITY must change")
            if written:
                self._append("".join(lines).encode("utf-8"))
                # Each line is a UID no base had: the map changes once per line written.
                # Later, though: a first sync answers its SELECT before it needs the map.
                self._unmapped.append((bases, result))
                self._lines += written
                self._max_uid = max(self._max_uid, next_uid - 1)
            return result

    def raise_modseq_floor(self, floor: int) -> None:
        """Record durably that MODSEQs up to ``floor`` may be handed out.  Needs locked()."""
        with self._mutex:
            self._require_lock()
            if floor > self._floor:
                self._append(f"M{floor}\n".encode("ascii"))
                self._floor = floor

    def compact(self, existing_bases: Collection[str]) -> None:
        """Rewrite the file without entries whose base is not in ``existing_bases``.

        Needs locked().  The new file is flocked before it is renamed into place, so no other
        process can slip in between; waiters on the old file notice the replacement.
        """
        with self._mutex:
            old_fd = self._require_lock()
            entries = sorted((uid, b) for b, uid in self._map().items() if b in existing_bases)
            data = self._render(self._uidvalidity, self.next_uid, self._floor, entries)
            tmp = self._write_aside(data)
            new_fd = None
            try:
                new_fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
                fcntl.flock(new_fd, fcntl.LOCK_EX)  # uncontended: nobody knows this file yet
                os.rename(tmp, self.path)
            except BaseException:
                if new_fd is not None:
                    os.close(new_fd)
                unlink_quiet(tmp)
                raise
            fsync_dir(self.folder)
            self._lock_fd = new_fd
            os.close(old_fd)
            self._clear()
            self.refresh()
