"""New message files found by a sync, moved out of new/ and made into index rows: the
costly part of a first sync.

A first sync of a big folder meets every file at once (100,000 in a mailbox migrated or
delivered to before its first login), and does per file what these do: in new/, one
rename to cur/; then one stat() for the internal date (the file's mtime, as Dovecot takes
it) and for the size when the name lacks ,W= and ,S=, and one tuple.  Flags, keywords and
infos come from a name's letters, which few distinct strings share, so they are worked out
once per string.  Everything per message that C can do over whole columns (the insert, the
in-memory file list) index_sync does so, from the rows ``stat_new_files`` returns.
"""

from __future__ import annotations

import os
import stat

from maildir.index_state import info_name
from maildir.keywords import KeywordMap, bits_of_letters, join_keywords

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def move_fresh_to_cur(directory: str, fresh: dict[str, tuple], bases: list[str]) -> tuple:
    """Move the new/ files of ``fresh`` (base -> ``(base, subdir, name, size, letters)``)
    with these ``bases`` to cur/, with an empty info, as Dovecot does when it syncs; their
    entries follow.  Returns ``(moved any, raced)``: ``raced`` if one was gone (moved or
    deleted since the listing: the next pass finds it), and then it is left out."""
    moved = raced = False
    new, cur = f"{directory}/new/", f"{directory}/cur/"
    infos: dict[str, str] = {}  # letters -> the info of a name with them
    for base in bases:
        entry = fresh.get(base)
        if entry is None or entry[1] != "new":
            continue  # it met a twin, which made it a rename's business
        _, _, name, size, letters = entry
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
        fresh[base] = (base, "cur", target, size, letters)
        moved = True
    return moved, raced


def stat_new_files(directory: str, adds: list[tuple], keywords: KeywordMap) -> tuple[list, bool]:
    """``(rows, raced)`` for new files ``(base, subdir, name, size or None, letters)`` of the
    folder at ``directory``, ``size`` being RFC822.SIZE as the name gives it.

    Rows are ``(mtime_ns, name, subdir, base, size, internal date, flag bits, keywords)``,
    sorted into the order of their UIDs to be.  ``raced``: a file was gone when we looked
    (moved or deleted since the listing): the caller lists again.  What is not a regular
    file is left out.
    """
    rows = []
    raced = False
    by_letters: dict[str, tuple[int, str]] = {}
    names_of = keywords.names_of
    stat_, is_file = os.stat, stat.S_ISREG
    # stat() by name in the open directory: the kernel does not walk the whole path again
    # for each file (an eighth of the stat time).
    dir_fds: dict[str, int] = {}
    try:
        for base, subdir, name, size, letters in adds:
            try:
                fd = dir_fds.get(subdir)
                if fd is None:
                    fd = dir_fds[subdir] = os.open(f"{directory}/{subdir}", _DIR_FLAGS)
                st = stat_(name, dir_fd=fd)
            except FileNotFoundError:
                raced = True
                continue
            if not is_file(st.st_mode):
                continue
            flags = by_letters.get(letters)
            if flags is None:
                flags = (bits_of_letters(letters), join_keywords(names_of(letters)))
                by_letters[letters] = flags
            # RFC822.SIZE: ,W= is the size with CRLF line ends, which is what IMAP serves;
            # our own files have ,W= = ,S= = the file size.
            if size is None:
                size = st.st_size
            date = int(st.st_mtime)
            rows.append((st.st_mtime_ns, name, subdir, base, size, date, flags[0], flags[1]))
    finally:
        for fd in dir_fds.values():
            os.close(fd)
    # UIDs in delivery order: a file's mtime is when it was delivered.  Names are unique,
    # so the tuples compare by (mtime, name) alone.
    rows.sort()
    return rows, raced
