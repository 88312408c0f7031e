"""Delivering messages into Maildir folders, all-or-nothing across several mailboxes.

https://cr.yp.to/proto/maildir.html, "How a message is delivered": create a uniquely named
file in ``tmp/``, write it and fsync it (here: write it with O_SYNC, which is the same in one
system call), then move it into ``new/``.  A reader only ever looks
at ``new/`` and ``cur/``, so it never sees a partial message.

One SMTP transaction may be delivered to several local recipients, and SMTP has one reply
for the whole DATA: either every copy is stored (250) or none is (451, and the sender
retries).  So ``deliver`` works in two phases over all recipients: first every copy is
written and fsynced in ``tmp/`` (the slow, failure-prone part: disk full, I/O error), and
only then are they all renamed into ``new/``.  On any failure the copies already made are
removed again, so a retry cannot produce duplicates in some mailboxes.

Messages are stored byte-exact as received with CRLF line ends, so ``,W=`` (the RFC 822
size, counted with CRLF) equals ``,S=`` (the file size).  Dovecot and the IMAP layer take
RFC822.SIZE from ``,W=`` without opening the file.  The caller must pass CRLF data.

Thread safety: there is no shared state beyond the unique-name counter, and each file is
created with O_EXCL, so several threads may deliver at once (the server does, so that the
fsyncs of different transactions overlap).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from maildir.naming import new_unique_name
from maildir.safeio import fsync_dir, unlink_quiet, write_all

# maildir.html: "A delivery program ... should delete a file in tmp that has not been
# accessed in 36 hours" -- a crashed writer's leftovers.
TMP_MAX_AGE = 36 * 3600

FILE_MODE = 0o600

# writev takes at most this many buffers (Linux's UIO_MAXIOV); a delivery has two or three.
_IOV_MAX = 1024

# O_EXCL makes a name collision an error instead of an overwrite.  With 64 random bits in
# every name a collision means something odd (a clock jump plus bad luck); try a new name.
_NAME_ATTEMPTS = 3


@dataclass(frozen=True)
class Delivery:
    """One copy of a message for one folder (a directory holding ``tmp/ new/ cur/``).

    The message is the concatenation of ``chunks``: typically this recipient's trace headers
    (Return-Path, Received, Delivered-To) first, then the body shared by all recipients,
    so the body is never copied per recipient.
    """

    folder: Path
    chunks: Sequence[bytes]


class DeliveryError(OSError):
    """Delivery failed and nothing of the message is left in any new/ or cur/.

    ``errno`` is the cause's errno when there is one (ENOSPC, EDQUOT, EIO, ...), so the SMTP
    layer can choose its reply; the cause is also chained as ``__cause__``.
    """


@dataclass(frozen=True)
class _Staged:
    folder: str
    tmp_path: str
    unique: str
    size: int




def _open_tmp(folder: str, hostname: str | None) -> tuple[int, str, str]:
    for attempt in range(_NAME_ATTEMPTS):
        unique = new_unique_name(hostname)
        tmp_path = f"{folder}/tmp/{unique}"
        try:
            # O_SYNC: each write returns once the data is on disk, as write + fsync would.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_SYNC
            return os.open(tmp_path, flags, FILE_MODE), tmp_path, unique
        except FileExistsError:
            if attempt == _NAME_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _write_synced(fd: int, chunks: Iterable[bytes]) -> int:
    """All chunks in one writev on an O_SYNC descriptor: written and on disk in one system
    call, where a write per chunk and an fsync were three. Each system call a delivery thread
    makes hands the GIL to the event loop and back: fewer of them, less time lost switching.
    A short write (rare on a regular file) goes on with write_all, also synced."""
    views = [memoryview(chunk).cast("B") for chunk in chunks]
    total = sum(len(view) for view in views)
    written = os.writev(fd, views) if len(views) <= _IOV_MAX else 0
    if written < total:
        rest = b"".join(views)[written:]
        written += write_all(fd, [rest])
    return written


def _stage(delivery: Delivery, hostname: str | None) -> _Staged:
    """Phase 1 for one copy: write ``tmp/<unique>`` to disk (O_SYNC: the data and the inode,
    as fsync makes them durable); remove it again on failure."""
    folder = os.fspath(delivery.folder)
    fd, tmp_path, unique = _open_tmp(folder, hostname)
    try:
        try:
            size = _write_synced(fd, delivery.chunks)
        finally:
            # close() can report a deferred write error (NFS); it counts as a failure too.
            os.close(fd)
    except BaseException:
        unlink_quiet(tmp_path)
        raise
    return _Staged(folder, tmp_path, unique, size)


def _delivery_error(exc: Exception, folder: Path | str, phase: str) -> DeliveryError:
    text = f"delivery to {folder} failed while {phase}: {exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return DeliveryError(exc.errno, text)
    return DeliveryError(text)


def _fsync_quiet(directories: Iterable[str]) -> None:
    for directory in directories:
        try:
            fsync_dir(directory)
        except OSError:
            pass


def deliver(deliveries: Sequence[Delivery], hostname: str | None = None) -> list[Path]:
    """Store every delivery, or none of them; return the final paths, in order.

    Raises DeliveryError if any copy cannot be written, after removing all copies.
    """
    staged: list[_Staged] = []
    current = None
    try:
        for delivery in deliveries:
            current = delivery.folder
            staged.append(_stage(delivery, hostname))
    except BaseException as exc:
        for item in staged:
            unlink_quiet(item.tmp_path)
        if isinstance(exc, Exception):
            raise _delivery_error(exc, current or Path(), "writing tmp/") from exc
        raise  # KeyboardInterrupt and friends: cleaned up, now let them through unchanged

    # Paths are strings inside deliver (here, _stage, _open_tmp): pathlib's joins and hashes
    # were two fifths of the Python a store thread ran per message, all of it while holding
    # the GIL the event loop needs.
    final: list[str] = []
    try:
        for item in staged:
            current = item.folder
            target = f"{item.folder}/new/{item.unique},S={item.size},W={item.size}"
            os.rename(item.tmp_path, target)
            final.append(target)
        # One fsync per distinct new/ makes every rename above durable; only now may the
        # SMTP layer answer 250.
        for new_dir in dict.fromkeys(os.path.dirname(path) for path in final):
            current = os.path.dirname(new_dir)
            fsync_dir(new_dir)
    except BaseException as exc:
        for path in final:
            unlink_quiet(path)
        for item in staged[len(final) :]:
            unlink_quiet(item.tmp_path)
        # Best effort: make the removals durable too, so a crash now does not resurrect a
        # copy the sender will deliver again on retry.
        _fsync_quiet(dict.fromkeys(os.path.dirname(path) for path in final))
        if isinstance(exc, Exception):
            raise _delivery_error(exc, current or Path(), "moving into new/") from exc
        raise
    return [Path(path) for path in final]


def cleanup_tmp(folder: Path, older_than: float = TMP_MAX_AGE) -> int:
    """Remove files in ``folder/tmp`` untouched for ``older_than`` seconds; return how many.

    "Untouched" is the newer of atime and mtime: the spec says accessed, but atime is often
    not updated (noatime/relatime), while a writer in progress always bumps mtime.  A missing
    ``tmp/`` counts as empty (the folder may be deleted concurrently).
    """
    cutoff = time.time() - older_than
    removed = 0
    try:
        entries = list(os.scandir(folder / "tmp"))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            if max(st.st_atime, st.st_mtime) < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue  # another cleaner or the delivery itself got there first
    return removed
