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
from collections.abc import Iterable
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


def fsync_dir(path: Path | str) -> None:
    """fsync a directory so that entries created or renamed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def unlink_quiet(path: Path | str) -> None:
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
