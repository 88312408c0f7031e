"""New message files found by a sync, moved out of new/ and made into index rows: the
costly part of a first sync.

A first sync of a big folder meets every file at once (100,000 in a mailbox migrated or
delivered to before its first login), and does per file what these do: in new/, one
rename to cur/; then one tuple.  No stat(): as Dovecot does, the size comes from the name
(,W= else ,S=), and the internal date (the file's mtime) is read when a command first asks
for it (index_dates); only a name without a size costs a stat(), which gives both.  UIDs
follow the names' delivery times (``order_of``), as Dovecot assigns them, not the mtimes.
Flags, keywords and infos come from a name's letters, which few distinct strings share, so
they are worked out once per string.  Everything per message that C can do over whole
columns (the insert, the in-memory file list) index_sync does so, from the rows
``new_rows`` returns.
"""

from __future__ import annotations

import os

from maildir.index_state import info_name
from maildir.keywords import KeywordMap, bits_of_letters, join_keywords


def move_fresh_to_cur(directory: str, fresh: dict[str, tuple], bases: list[str]) -> tuple:
    """Move the new/ files of ``fresh`` (base -> ``(base, subdir, name, size, letters,
    seconds, microseconds)``) with these ``bases`` to cur/, with an empty info, as Dovecot
    does when it syncs; their entries follow.  Returns ``(moved any, raced)``: ``raced`` if
    one was gone (moved or deleted since the listing: the next pass finds it), and then it
    is left out."""
    moved = raced = False
    new, cur = f"{directory}/new/", f"{directory}/cur/"
    infos: dict[str, str] = {}  # letters -> the info of a name with them
    for base in bases:
        entry = fresh.get(base)
        if entry is None or entry[1] != "new":
            continue  # it met a twin, which made it a rename's business
        name, letters = entry[2], entry[4]
        info = infos.get(letters)
        if info is None:
            info = infos[letters] = info_name("", letters)
        target = name.partition(":")[0] + info
        try:
            os.rename(new + name, cur + target)
        except FileNotFoundError:
            raced = True
            del fresh[base]
            continue
        except PermissionError:
            continue  # a read-only folder: index the message where it is
        fresh[base] = (base, "cur", target, *entry[3:])
        moved = True
    return moved, raced


def new_rows(directory: str, adds: list[tuple], keywords: KeywordMap) -> tuple[list, bool]:
    """``(rows, raced)`` for new files ``(base, subdir, name, size or None, letters,
    seconds, microseconds)`` of the folder at ``directory``, ``size`` being RFC822.SIZE as
    the name gives it, the numbers ``order_of(base)``.

    Rows are ``(seconds, microseconds, base, name, subdir, size, internal date or None,
    flag bits, keywords)``, sorted into the order of their UIDs to be (bases are unique,
    so the tuples compare by their first three).  Only a file whose name lacks the size is
    stat()ed, and then its date is known too.  ``raced``: such a file was gone when we
    looked (moved or deleted since the listing): the caller lists again.
    """
    rows = []
    raced = False
    by_letters: dict[str, tuple[int, str]] = {}
    names_of = keywords.names_of
    for base, subdir, name, size, letters, secs, usecs in adds:
        flags = by_letters.get(letters)
        if flags is None:
            flags = (bits_of_letters(letters), join_keywords(names_of(letters)))
            by_letters[letters] = flags
        date = None
        if size is None:
            try:
                st = os.stat(f"{directory}/{subdir}/{name}")
            except FileNotFoundError:
                raced = True
                continue
            size, date = st.st_size, int(st.st_mtime)
        rows.append((secs, usecs, base, name, subdir, size, date, flags[0], flags[1]))
    rows.sort()
    return rows, raced
