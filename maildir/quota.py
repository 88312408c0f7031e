"""Maildir++ quota: the ``maildirsize`` file in the Maildir root.

https://www.courier-mta.org/imap/README.maildirquota.html, "Contents of maildirsize": the
first line is the quota definition (we only use the byte form, ``<bytes>S``); every further
line is ``<bytes> <count>``, two whitespace-separated integers, possibly negative.  Usage is
the sum of all those lines.  Writers append a line per change with O_APPEND instead of
rewriting the file, so concurrent deliveries do not lock each other out.

The file is a cache.  Whenever it looks wrong it is thrown away and rebuilt by walking the
store (``usage`` does this), and the README's own limit (a file over 5120 bytes must be
recalculated) keeps the appended history short.  Because it is a cache, appends are not
fsynced: a line lost in a crash only makes the count approximate until the next rebuild,
and quota is approximate anyway (a delivery racing a rebuild can be counted twice or not
at all).  Dovecot and Courier read and write the same file, so the store stays compatible.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from maildir.naming import new_unique_name, parse_name
from maildir.safeio import write_file_atomic

MAILDIRSIZE = "maildirsize"

# README.maildirquota: "If the maildirsize file is larger than 5120 bytes, ... recalculate".
MAX_MAILDIRSIZE_BYTES = 5120

# Strict integers: int() alone would also accept "1_000", "+5" and non-ASCII digits.
_INTEGER = re.compile(r"-?[0-9]{1,19}")


def _definition(quota_bytes: int) -> str:
    if quota_bytes < 0:
        raise ValueError(f"quota must be >= 0 bytes, got {quota_bytes}")
    return f"{quota_bytes}S"


def _read(path: Path, definition: str) -> tuple[int, int] | None:
    """Sum ``maildirsize``; None when it must be recalculated (missing, stale or damaged)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MAILDIRSIZE_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_MAILDIRSIZE_BYTES:
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n"):
        return None  # a torn append, or not ours: do not trust any of it
    lines = text[:-1].split("\n")
    if lines[0] != definition:
        return None  # quota changed since the file was written (or another writer's format)
    total_bytes = total_count = 0
    for line in lines[1:]:
        fields = line.split()
        if len(fields) != 2 or not all(_INTEGER.fullmatch(field) for field in fields):
            return None
        total_bytes += int(fields[0])
        total_count += int(fields[1])
    if total_bytes < 0 or total_count < 0:
        return None  # deltas that outran the real usage: the file has drifted
    return total_bytes, total_count


def _mail_dirs(root: Path) -> list[Path]:
    """``new/`` and ``cur/`` of INBOX and of every ``.``-folder, valid name or not.

    Disk usage is disk usage: a folder some other program created under a name IMAP cannot
    open still takes space, so this does not filter through list_folders.
    """
    folders = [root]
    try:
        with os.scandir(root) as entries:
            folders += [Path(e.path) for e in entries if e.name.startswith(".") and e.is_dir()]
    except FileNotFoundError:
        pass
    return [folder / sub for folder in folders for sub in ("new", "cur")]


def recalculate(root: Path) -> tuple[int, int]:
    """Walk the store and return (bytes, messages), without touching ``maildirsize``."""
    total_bytes = total_count = 0
    for directory in _mail_dirs(root):
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            # maildir.html: names starting with "." are not messages.
            if entry.name.startswith("."):
                continue
            size = parse_name(entry.name).size
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if size is None:  # ,S= saves a stat() per message; fall back without it
                    size = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue  # expunged or moved between new/ and cur/ while we walked
            total_bytes += size
            total_count += 1
    return total_bytes, total_count


def usage(root: Path, quota_bytes: int) -> tuple[int, int]:
    """Current (bytes, messages) of the Maildir at ``root`` under a quota of ``quota_bytes``.

    Reads ``maildirsize``; if it is missing, was written for another quota, is over 5120
    bytes or cannot be parsed, recalculates and atomically writes a fresh one.
    """
    definition = _definition(quota_bytes)
    path = root / MAILDIRSIZE
    totals = _read(path, definition)
    if totals is None:
        totals = recalculate(root)
        content = f"{definition}\n{totals[0]} {totals[1]}\n".encode("ascii")
        # The temporary file goes in the Maildir's own tmp/: same filesystem (so the rename
        # is atomic), invisible to every Maildir reader, and cleanup_tmp removes it if we
        # crash before the rename.
        write_file_atomic(path, content, root / "tmp" / new_unique_name())
    return totals


def record(root: Path, bytes_delta: int, count_delta: int) -> None:
    """Append a ``"<bytes> <count>"`` line after storing or removing messages.

    Does nothing when there is no ``maildirsize``: the next ``usage`` rebuilds it from the
    store, which then already includes this change.
    """
    line = f"{int(bytes_delta)} {int(count_delta)}\n".encode("ascii")
    try:
        fd = os.open(root / MAILDIRSIZE, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        # One write(2) on an O_APPEND descriptor: concurrent appenders' lines never interleave
        # (a line this short is never split on a local filesystem).  If it were, _read would
        # see a damaged line and recalculate.
        os.write(fd, line)
    finally:
        os.close(fd)


def invalidate(root: Path) -> None:
    """Delete ``maildirsize`` (when the admin changed the quota); ``usage`` rebuilds it.

    No fsync: if a crash undoes the unlink, the old file's first line still names the old
    quota, so the next ``usage`` with the new quota rebuilds it anyway.
    """
    try:
        os.unlink(root / MAILDIRSIZE)
    except FileNotFoundError:
        pass
