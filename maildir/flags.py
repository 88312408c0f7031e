"""Maildir message flags, stored in the file name's ``:2,<flags>`` info.

https://cr.yp.to/proto/maildir.html, "What can I put in info?": the info "2,<flags>" lists
uppercase flag letters "in ASCII order": D (draft), F (flagged), P (passed), R (replied),
S (seen), T (trashed).  Dovecot adds the lowercase letters a-z as IMAP keywords, mapped to
names in the folder's ``dovecot-keywords`` file (the mapping is the IMAP layer's business).

Changing flags is a rename inside the folder.  We do not fsync after it: both the old and
the new name are valid states of the message, so a crash can at worst forget a flag change,
never lose mail, and IMAP STORE is far too frequent to pay a disk flush each time.
"""

from __future__ import annotations

import errno
import os
import string
from pathlib import Path

from maildir.naming import parse_name

DRAFT = "D"
FLAGGED = "F"
PASSED = "P"
REPLIED = "R"
SEEN = "S"
TRASHED = "T"

STANDARD_FLAGS = DRAFT + FLAGGED + PASSED + REPLIED + SEEN + TRASHED
KEYWORD_LETTERS = string.ascii_lowercase
VALID_FLAGS = frozenset(STANDARD_FLAGS + KEYWORD_LETTERS)


def normalize_flags(flags: str) -> str:
    """Return ``flags`` sorted by ASCII and de-duplicated; ValueError on any unknown letter."""
    bad = set(flags) - VALID_FLAGS
    if bad:
        raise ValueError(
            f"invalid Maildir flag(s) {''.join(sorted(bad))!r}: "
            f"allowed are {STANDARD_FLAGS} and keyword letters a-z"
        )
    return "".join(sorted(set(flags)))


def flags_of(filename: str) -> str:
    """The flags in a file name's ``:2,`` info (sorted, de-duplicated), "" when there are none.

    This reports what is on disk and may contain letters another program wrote that
    ``with_flags`` would refuse; filter with VALID_FLAGS before writing them back.
    """
    return parse_name(filename).flags


def with_flags(filename: str, flags: str) -> str:
    """Return ``filename`` with its info replaced by ``:2,<flags>`` (sorted, de-duplicated).

    Any existing info is replaced, including the experimental ``:1,`` form: maildir.html
    defines only version 2 semantics, and a reader that knows ``:1,`` would not know ours.
    The part before ``:`` (unique name and ,S=/,W= sizes) is kept byte for byte.
    """
    normalized = normalize_flags(flags)
    parse_name(filename)  # ValueError for names that are not a file in a folder
    head = filename.partition(":")[0]
    return f"{head}:2,{normalized}"


def set_flags(folder: Path, filename: str, flags: str) -> str:
    """Rename message ``filename`` of ``folder`` so that it carries ``flags``; return the new name.

    The message is looked up in ``cur/`` first, then in ``new/``; either way it ends up in
    ``cur/``, since maildir.html says a reader moves a message it has seen to cur/ and only
    cur/ names carry info.  Raises FileNotFoundError when the message is in neither (expunged
    or renamed meanwhile by another process: the caller should rescan the folder).
    """
    new_name = with_flags(filename, flags)
    cur = folder / "cur"
    target = cur / new_name
    for source in (cur / filename, folder / "new" / filename):
        try:
            # rename(2) is atomic: a concurrent reader sees the old name or the new one.
            os.rename(source, target)
        except FileNotFoundError:
            continue
        return new_name
    if not cur.is_dir():
        raise FileNotFoundError(errno.ENOENT, "not a Maildir folder (no cur/)", str(folder))
    raise FileNotFoundError(
        errno.ENOENT, "message is in neither cur/ nor new/", str(folder / filename)
    )
