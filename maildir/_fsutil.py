"""Durability helpers shared by the maildir modules (private).

A rename or a new directory entry is only on disk once the *directory* holding it has been
fsynced; fsyncing the file alone persists its data, not its name.  Every module that creates
or renames something the user must not lose goes through these two functions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def fsync_dir(path: Path) -> None:
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


def unlink_quiet(path: Path) -> None:
    """Remove a file during cleanup, where a second error must not hide the first one."""
    try:
        os.unlink(path)
    except OSError:
        pass
