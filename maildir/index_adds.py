"""New message files found by a sync, moved out of new/ and made into index rows: the
costly part of a first sync.

A first sync of a big folder meets every file at once (100,000 in a mailbox migrated or
delivered to before its first login), and does per file what these do: in new/, one
rename to cur/; then one tuple.  No stat(): as Dovecot does, the size comes from the name
(,W= else ,S=), and the internal date (the file's mtime) is read when a command first asks
for it (index_dates); only a name without a size costs a stat(), which gives both.  UIDs
follow the names' delivery times (``order_of``), as Dovecot assigns them, not the mtimes.
Flags, keywords and infos come from a name's letters, which few distinct strings share, so
they are worked out once per string.  The cur/ listing of a first sync is matched in one
regex call (``bulk_match``), and from there on everything per message is done over whole
columns in C (map, zip, one sort by int keys): the UIDs, the insert, the in-memory file
list and the view that SELECT loads next.  Python code run once per message costs about
as much as the SQLite insert of it.
"""

from __future__ import annotations

import os
from itertools import repeat
from operator import add, itemgetter, mul
from typing import TYPE_CHECKING

from maildir.index_state import (
    KnownFiles,
    common_names,
    info_name,
    letters_of_info,
    split_name,
    usual_names,
    vsizes,
)
from maildir.keywords import KeywordMap, bits_of_letters, join_keywords

if TYPE_CHECKING:
    from maildir import index_sql as sql
    from maildir.index import FolderIndex

# Listings from which ``bulk_match`` is worth a try: below, the loop per name costs little.
BULK = 1000


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


_FIELDS = tuple(map(itemgetter, range(6)))


def bulk_match(names: list[str]) -> tuple | None:
    """Columns ``(seconds, microseconds, bases, names, sizes, letters)`` of the cur/ names
    of a first sync (sizes as digits, or None: each name's ,W=, read by ``NewRows.files``),
    as the loop per name would make their entries, from one regex call and C loops; None
    unless every name is of the usual shape, gives its size the same way (all with ,W=, or
    all with ,S= alone) and has a base of its own.  The caller checks that the bases are
    new to the folder."""
    joined = "/".join(names)
    common = common_names(f"/{joined}/")
    if len(common) == len(names):
        bases, secs, usecs, flags = (list(map(get, common)) for get in _FIELDS[:4])
        if len(set(bases)) != len(bases):
            return None
        letters = {f: letters_of_info("2," + f) for f in set(flags)}
        return (list(map(int, secs)), list(map(int, usecs)), bases, names, None,
                list(map(letters.__getitem__, flags)))
    matches = usual_names(joined + "/")
    # A column at a time: zip(*matches) costs three times as much, with 100,000 arguments.
    bases, secs, usecs, sizes, vsizes, infos = (list(map(get, matches)) for get in _FIELDS)
    if "" in bases or len(set(bases)) != len(bases):
        return None
    if "" not in vsizes:
        sizes = vsizes  # RFC822.SIZE: ,W= first, as split_name's callers take it
    elif any(vsizes) or "" in sizes:
        return None
    return (
        list(map(int, secs)) if "" not in secs else [int(x) if x else 0 for x in secs],
        list(map(int, usecs)) if "" not in usecs else [int(x) if x else 0 for x in usecs],
        bases,
        names,
        sizes,  # digits: made ints by NewRows.files, once in UID order (after an answer)
        list(map(letters_of_info, infos)),  # "" is no info, as None is
    )


class NewRows:
    """The columns of new rows, in the order of their UIDs to be: ``bases``, flag ``bits``
    and ``keywords`` at once (what a first sync's early answer needs), the rest when
    ``files()`` is called (after that answer: reordering 100,000 is a tenth of it)."""

    def __init__(self, columns: list[list], order: list[int]) -> None:
        self._columns, self._order = columns, order
        self.bases, self.bits, self.keywords = (
            list(map(columns[i].__getitem__, order)) for i in (2, 7, 8)
        )

    def files(self) -> tuple[list[str], list[str], list[int], list[int | None]]:
        """``(names, subdirs, sizes, internal dates (None: not read yet))``."""
        columns, order = self._columns, self._order
        names, subdirs, sizes, dates = (
            list(map(columns[i].__getitem__, order)) for i in (3, 4, 5, 6)
        )
        return names, subdirs, _sizes(names, sizes), dates


def _sizes(names: list[str], sizes: list) -> list[int]:
    """The sizes as ints; None stands for a name of ``common_names``' shape: its ,W=."""
    if None not in sizes:
        return list(map(int, sizes))
    if sizes.count(None) == len(sizes):
        found = vsizes(f"/{'/'.join(names)}")
        if len(found) == len(names):
            return list(map(int, found))
    # Some sizes known already (files from new/), or, were a name ever to escape the shape,
    # name by name: a size short would shift every row after it.
    return [int(s) if s is not None else _vsize(n) for n, s in zip(names, sizes, strict=True)]


def _vsize(name: str) -> int:
    _, size, vsize, _ = split_name(name)
    return vsize if vsize is not None else size


def new_rows(
    directory: str, adds: list[tuple], keywords: KeywordMap, bulk: tuple | None = None
) -> tuple[NewRows, bool]:
    """``(NewRows, raced)`` for new files ``(base, subdir, name, size or None, letters,
    seconds, microseconds)`` of the folder at ``directory``, ``size`` being RFC822.SIZE as
    the name gives it, the numbers ``order_of(base)``; ``bulk``: the columns
    ``bulk_match`` made of cur/ names, taken in C.

    Only a file whose name lacks the size is stat()ed, and then its date is known too.
    ``raced``: such a file was gone when we looked (moved or deleted since the listing):
    the caller lists again.
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
    columns = [list(column) for column in zip(*rows, strict=True)] or [[] for _ in range(9)]
    if bulk is not None:
        secs, usecs, bases, names, sizes, letters = bulk
        bits_of, keywords_of = {}, {}
        for text in set(letters):
            bits_of[text] = bits_of_letters(text)
            keywords_of[text] = join_keywords(names_of(text))
        count = len(bases)
        for column, more in zip(columns, (
            secs, usecs, bases, names, repeat("cur", count),
            repeat(None, count) if sizes is None else sizes, repeat(None, count),
            map(bits_of.__getitem__, letters), map(keywords_of.__getitem__, letters),
        ), strict=True):
            column += more
    return NewRows(columns, _uid_order(*columns[:3])), raced


def _uid_order(secs: list[int], usecs: list[int], bases: list[str]) -> list[int]:
    """Positions sorted by (seconds, microseconds, base): Dovecot's order for new UIDs.

    Sorted by one int per message when that says it all (microseconds below a million, as
    in every name a delivery agent makes, and no two messages in the same microsecond):
    list.sort compares ints far faster than tuples, which is a twentieth of a first sync.
    """
    if usecs and max(usecs) < 1_000_000:
        keys = list(map(add, map(mul, secs, repeat(1_000_000)), usecs))
        if len(set(keys)) == len(keys):
            return sorted(range(len(keys)), key=keys.__getitem__)
    keys = list(zip(secs, usecs, bases, strict=True))
    return sorted(range(len(keys)), key=keys.__getitem__)


def assign_uids(
    fi: FolderIndex, row: sql.FolderRow, known: KnownFiles, bases: list[str]
) -> list[int]:
    """UIDs for the new files with ``bases``, in order, from the folder's uidlist."""
    taken: set[int] | None = None

    def reuse(base: str, uid: int) -> bool:
        # The uidlist already has this base: keep its UID while the index is rebuilt
        # (uidnext is still 1) or when a process crashed between the uidlist append and
        # the index commit (uid >= uidnext: no client saw it).  A lower UID belonged to a
        # message since expunged, and RFC 3501 UIDs only ever ascend.
        nonlocal taken
        if uid < row.uidnext:
            return False
        if taken is None:
            taken = {entry[0] for entry in known.bases.values()}
        if uid in taken:
            return False
        taken.add(uid)
        return True

    return fi._uidlist.assign(bases, reuse)
