"""Maildir++ folder layout: INBOX at the root, every other folder in ``root/.<Name>``.

https://www.courier-mta.org/imap/README.maildirquota.html ("Folders") and Dovecot's default
Maildir++ layout: the root holds ``cur/ new/ tmp/`` (that is INBOX); a folder ``Lists.python``
is the directory ``root/.Lists.python`` with its own ``cur/ new/ tmp/`` and an empty
``maildirfolder`` file (which tells quota-aware writers that the Maildir++ root is ``..``).
The hierarchy separator is ``.``, so it can never appear inside a name component.

``folder_path`` is a security boundary: folder names arrive from IMAP clients (CREATE,
SELECT, RENAME), and a name like ``../../etc`` or ``a/b`` must never become a path outside
the user's own store.  Names are stored as given (IMAP's modified UTF-7 decoding, and any
"INBOX." namespace prefix, are the IMAP layer's job).
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from maildir.safeio import fsync_dirs

INBOX = "INBOX"
SEPARATOR = "."
DEFAULT_FOLDERS = ("Sent", "Drafts", "Trash", "Junk", "Archive")

MAILDIR_SUBDIRS = ("cur", "new", "tmp")
MAILDIRFOLDER = "maildirfolder"
DIR_MODE = 0o700

# NAME_MAX on Linux filesystems is 255 bytes and the directory name is "." + name.
_MAX_DIR_NAME_BYTES = 255


def validate_folder_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a safe Maildir++ folder name (INBOX excluded)."""
    if not name:
        raise ValueError("folder name is empty")
    if name.startswith(SEPARATOR) or name.endswith(SEPARATOR):
        raise ValueError(f"folder name {name!r} starts or ends with the separator '.'")
    if ".." in name:
        # Also catches "a..b": an empty component would collide with hierarchy parsing and
        # "." + ".." + ... is the classic parent-directory escape.
        raise ValueError(f"folder name {name!r} contains '..' (empty component)")
    for ch in name:
        if ch in ("/", "\\"):
            raise ValueError(f"folder name {name!r} contains a path separator {ch!r}")
        category = unicodedata.category(ch)
        # Cc: C0/C1 controls, DEL and NUL (a NUL would truncate the path in the kernel).
        # Cs: lone surrogates, which cannot be encoded into a file name at all.
        if category in ("Cc", "Cs"):
            raise ValueError(f"folder name {name!r} contains control character {ch!r}")
    if len((SEPARATOR + name).encode("utf-8")) > _MAX_DIR_NAME_BYTES:
        raise ValueError(f"folder name {name!r} is longer than {_MAX_DIR_NAME_BYTES - 1} bytes")


def is_inbox(name: str) -> bool:
    """True for INBOX in any letter case (RFC 3501 §5.1: INBOX is case-insensitive).

    ASCII only on purpose: "ınbox".upper() == "INBOX" with the Turkish dotless i, and such a
    name must stay an ordinary folder rather than alias the real INBOX.
    """
    return name.isascii() and name.upper() == INBOX


def folder_path(root: Path, name: str) -> Path:
    """The directory of folder ``name``: ``root`` for INBOX, else ``root/.<name>``."""
    if is_inbox(name):
        return root
    validate_folder_name(name)
    return root / (SEPARATOR + name)


def _make_dir(path: Path, touched: set[Path]) -> None:
    """Create ``path`` and its missing parents, recording what needs an fsync."""
    missing = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            if directory.is_dir():  # another process created it meanwhile
                continue
            raise
        # mkdir's mode is filtered by the umask; mail must be private whatever the umask is.
        os.chmod(directory, DIR_MODE)
        # The new directory's own entries (cur, new, ...) and its name in the parent.
        touched.add(directory)
        touched.add(directory.parent)


def _make_maildir(path: Path, touched: set[Path]) -> None:
    for sub in MAILDIR_SUBDIRS:
        _make_dir(path / sub, touched)


def _make_folder(root: Path, name: str, touched: set[Path]) -> Path:
    path = folder_path(root, name)
    if path == root:
        return path
    _make_maildir(path, touched)
    marker = path / MAILDIRFOLDER
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        touched.add(path)
    return path


def _superiors(name: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b", "a.b.c"]``."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[: i + 1]) for i in range(len(parts))]


def create_maildir(root: Path, folders: Iterable[str] = DEFAULT_FOLDERS) -> None:
    """Create the Maildir at ``root`` (INBOX) and ``folders``; idempotent.

    Directories are mode 0700.  Every directory created is fsynced together with its parent,
    so once this returns a crash cannot lose an account's store.
    """
    names = list(folders)
    for name in names:  # refuse a bad name before creating anything
        if not is_inbox(name):
            validate_folder_name(name)
    touched: set[Path] = set()
    _make_maildir(root, touched)
    for name in names:
        for superior in _superiors(name) if not is_inbox(name) else [name]:
            _make_folder(root, superior, touched)
    fsync_dirs(touched)


def create_folder(root: Path, name: str) -> Path:
    """Create folder ``name`` under the existing Maildir ``root``; idempotent; return its path.

    RFC 3501 §6.3.3: "the server SHOULD create any superior hierarchical names that are needed",
    so ``Lists.python`` also creates ``Lists``.  Raises FileNotFoundError if ``root`` is not a
    Maildir yet (create_maildir makes one), rather than silently building half a store.
    """
    path = folder_path(root, name)
    if not (root / "cur").is_dir():
        raise FileNotFoundError(f"not a Maildir (no cur/): {root}")
    if path == root:
        return root
    touched: set[Path] = set()
    for superior in _superiors(name):
        _make_folder(root, superior, touched)
    fsync_dirs(touched)
    return path


def list_folders(root: Path) -> list[str]:
    """Names of the existing subfolders of ``root``, sorted; INBOX is not included.

    A directory counts as a folder when it is ``.<valid name>`` and has a ``cur/``.  Entries
    whose name would fail ``validate_folder_name`` are skipped: they were not made by us and
    could not be opened through ``folder_path`` anyway.
    """
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    names = []
    for entry in entries:
        if not entry.name.startswith(SEPARATOR) or not entry.is_dir():
            continue
        name = entry.name[len(SEPARATOR) :]
        try:
            validate_folder_name(name)
        except ValueError:
            continue
        if os.path.isdir(os.path.join(entry.path, "cur")):
            names.append(name)
    return sorted(names)
