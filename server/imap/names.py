"""IMAP mailbox names over Maildir++ folders, special-use attributes and subscriptions.

IMAP names use ``/`` as the hierarchy separator ("Lists/python"); on disk Maildir++ uses
``.`` (".Lists.python"), so a literal ``.`` cannot appear in an IMAP name component — it is
refused rather than silently mapped (Dovecot does the same with its default layout). Names are
Unicode here; the parser has already decoded modified UTF-7 (RFC 3501 §5.1.3).
"""

from __future__ import annotations

from pathlib import Path

from maildir import validate_folder_name
from maildir.safeio import atomic_write

SEPARATOR = "/"

# RFC 6154: the folders every mailbox is created with, and what clients should use them for.
SPECIAL_USE = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
_USE_NAMES = {v.lower(): k for k, v in SPECIAL_USE.items()}

SUBSCRIPTIONS_FILE = "subscriptions"  # Dovecot's name and format: one folder per line


class BadName(ValueError):
    """Not a valid mailbox name; the message says why."""


def is_inbox(name: str) -> bool:
    # ASCII only: "ınbox" (dotless i) upper-cases to "INBOX" but is another mailbox.
    return name.isascii() and name.upper() == "INBOX"


def to_folder(name: str) -> str:
    """IMAP name -> Maildir++ folder name ("INBOX", or "Lists.python")."""
    if name.startswith(SEPARATOR):
        # Dovecot's rule too: a leading "/" reads as a filesystem path; there are none here.
        raise BadName(f"mailbox names cannot start with {SEPARATOR!r}")
    name = name.rstrip(SEPARATOR)
    if is_inbox(name):
        return "INBOX"
    parts = name.split(SEPARATOR)
    if any("." in part for part in parts):
        raise BadName(f"'.' is not allowed in mailbox names ({name!r})")
    folder = ".".join(parts)
    try:
        validate_folder_name(folder)
    except ValueError as err:
        raise BadName(str(err)) from None
    return folder


def to_imap(folder: str) -> str:
    return "INBOX" if folder == "INBOX" else folder.replace(".", SEPARATOR)


def special_use(folder: str) -> str | None:
    return SPECIAL_USE.get(folder)


def folder_for_use(use: str) -> str | None:
    return _USE_NAMES.get(use.lower())


def load_subscriptions(root: Path) -> set[str]:
    try:
        text = (root / SUBSCRIPTIONS_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    # "\n" only: splitlines() would also split names at U+2028 and other separators.
    return {line for line in text.split("\n") if line}


def save_subscriptions(root: Path, names: set[str]) -> None:
    atomic_write(root / SUBSCRIPTIONS_FILE, "".join(f"{n}\n" for n in sorted(names)))
