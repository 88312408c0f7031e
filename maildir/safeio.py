"""Durable file operations, for the maildir modules and for every other file mailstead keeps
(config, keys, certificates).

A rename or a new directory entry is only on disk once the *directory* holding it has been
fsynced; fsyncing the file alone persists its data, not its name.  Every module that creates
or renames something the user must not lose goes through these functions (the pattern of
chasquid's ``internal/safeio``).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterable
from pathlib import Path


def write_all(fd: int, chunks: Iterable[bytes]) -> int:
    """Write every chunk, looping over short writes; return the number of bytes written."""
    total = 0
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        while view:
            written = os.write(fd, view)
            view = view[written:]
            total += written
    return total


def fsync_dir(path: Path) -> None:
    """fsync a directory so that entries created or renamed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Round:
    """One fsync of a directory and the callers it answers for."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None


class SharedDirSync:
    """``fsync_dir`` for many threads at once, shared where that is safe (a group commit).

    Callers that ask while an fsync of the same directory is under way wait for it to end and
    then share the next one: each round covers every change its callers made before asking,
    because it starts after all of them asked. N deliveries renamed into ``new/`` at the same
    time cost two directory fsyncs instead of N, and none returns before its own rename is on
    disk. A failed round raises in every caller it was for (an OSError each); later rounds
    do not clear it, so a caller never learns of success from an fsync that began before
    its change.
    """

    def __init__(self, fsync: Callable[[Path], None] | None = None):
        self._fsync = fsync  # None: this module's fsync_dir, looked up when called
        self._lock = threading.Lock()
        self._dirs: dict[Path, _DirState] = {}

    def sync(self, path: Path) -> None:
        with self._lock:
            state = self._dirs.get(path)
            if state is None:
                state = self._dirs[path] = _DirState()
        state.sync(lambda: (self._fsync or fsync_dir)(path))


class _DirState:
    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.running = False
        self.next = _Round()  # the round that callers asking now will share

    def sync(self, fsync: Callable[[], None]) -> None:
        with self.cond:
            mine = self.next
            while not mine.done and self.running:
                self.cond.wait()
            if not mine.done:  # nobody is syncing: this caller runs the round
                self.running = True
                self.next = _Round()  # who asks from now on needs a later fsync
        if mine.done:
            if mine.error is not None:
                error = mine.error
                raise OSError(getattr(error, "errno", None),
                              f"fsync of the directory failed: {error}") from error
            return
        error = None
        try:
            fsync()
        except BaseException as exc:  # KeyboardInterrupt too: the others must not wait forever
            error = exc
        with self.cond:
            mine.done, mine.error = True, error
            self.running = False
            self.cond.notify_all()
        if error is not None:
            raise error


def fsync_dirs(paths: Iterable[Path]) -> None:
    """fsync each distinct directory once, deepest first (children before their parents)."""
    for path in sorted(set(paths), key=lambda p: (-len(p.parts), str(p))):
        fsync_dir(path)


def write_file_atomic(path: Path, data: bytes, tmp_path: Path) -> None:
    """Replace ``path`` with ``data``: write ``tmp_path``, fsync, rename, fsync the directory.

    ``tmp_path`` must be on the same filesystem as ``path`` (rename is only atomic there)
    and must not exist; a reader sees either the old content or the new, never a mix.
    """
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_path, path)
    except BaseException:
        unlink_quiet(tmp_path)
        raise
    fsync_dir(path.parent)


def unlink_quiet(path: Path) -> None:
    """Remove a file during cleanup, where a second error must not hide the first one."""
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with permissions ``mode``."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    write_file_atomic(path, data, path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp")
    os.chmod(path, mode)  # after the rename: never more open than 0600 meanwhile


def make_private_dir(path: Path, mode: int = 0o700) -> None:
    """Create ``path`` (and missing parents, with ``mode``) durably."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=mode)
        fsync_dir(d.parent)
