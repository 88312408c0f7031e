"""The values a folder's index answers with (maildir.index re-exports them)."""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import NamedTuple

from maildir.keywords import imap_flags


class MessageInfo(NamedTuple):
    """One message as IMAP sees it.  ``flags`` holds system flags and keywords, e.g.
    ``{"\\Seen", "$Forwarded", "Junk"}``; ``size`` is RFC822.SIZE; ``internal_date`` is
    seconds since the epoch (the file's mtime).  It is read from the file when first asked
    for (index_dates), so it is None in what ``changes_since`` and ``store_flags`` return
    and ``messages(dates=False)`` until something else has read it."""

    uid: int
    flags: frozenset[str]
    size: int
    internal_date: int | None
    modseq: int


class FolderStatus(NamedTuple):
    """Everything STATUS and SELECT report, from one snapshot.  ``first_unseen`` is a UID."""

    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    unseen: int
    first_unseen: int | None
    size: int


class Changes(NamedTuple):
    """What changed after a MODSEQ (from one snapshot): ``messages`` with a higher MODSEQ
    (new ones included, in UID order) and the UIDs ``expunged`` since (all of them: the index
    never forgets an expunge, so a view of any earlier MODSEQ can be brought up to date)."""

    highestmodseq: int
    uidnext: int
    messages: list[MessageInfo]
    expunged: list[int]
    uidvalidity: int = 0


class View(NamedTuple):
    """Every UID in order with its flags (one shared frozenset per distinct combination)."""

    uidvalidity: int
    highestmodseq: int
    uidnext: int
    uids: array
    flags: list[frozenset[str]]


class FirstView(NamedTuple):
    """What SELECT needs of a folder whose first sync is still writing its rows (see
    ``MailboxIndex.folder(early=...)``): the folder, its view, the first unseen UID and
    the keywords the folder's keyword file defines."""

    folder: object  # the FolderIndex
    view: View
    first_unseen: int | None
    defined_keywords: list[str]


class MessageGone(LookupError):
    """The UID is not (or no longer) in the folder: expunged, or never existed."""


def _infos(rows: Iterable[tuple]) -> list[MessageInfo]:
    return [
        MessageInfo(uid, imap_flags(bits, kws), size, date, modseq)
        for uid, bits, kws, size, date, modseq in rows
    ]
