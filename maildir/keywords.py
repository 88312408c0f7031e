"""IMAP flags <-> Maildir info letters, and the per-folder ``dovecot-keywords`` file.

System flags map to the uppercase letters of maildir.html, the way Dovecot maps them:
``\\Seen``=S ``\\Answered``=R ``\\Flagged``=F ``\\Deleted``=T ``\\Draft``=D, and the keyword
``$Forwarded``=P (maildir.html's "passed").  The index stores these six as a bitmask.

Other keywords live in the index.  So that other Maildir readers (Dovecot, mutt with a
Dovecot-aware setup) see them too, the first 26 keywords of a folder also get a lowercase
letter a-z, named in the folder's ``dovecot-keywords`` file: one ``<index> <name>`` line per
letter, index 0 = "a" (Dovecot's format, maildir-keywords.c).  Letters are only ever added,
never reused, and only while the folder's uidlist lock is held, so two processes never give
the same letter two names.  Keywords past the 26th exist in the index only: a rebuilt index
forgets them (documented limit, as in Dovecot).
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from maildir.naming import new_unique_name
from maildir.safeio import write_file_atomic

KEYWORDS_FILE = "dovecot-keywords"

SEEN = 1
ANSWERED = 2
FLAGGED = 4
DELETED = 8
DRAFT = 16
FORWARDED = 32

# Canonical spelling -> bit.  RFC 3501 §2.3.2: system flags begin with "\"; clients send
# them in any case ("\SEEN"), so they are matched case-insensitively and stored canonical.
SYSTEM_FLAGS = {
    "\\Seen": SEEN,
    "\\Answered": ANSWERED,
    "\\Flagged": FLAGGED,
    "\\Deleted": DELETED,
    "\\Draft": DRAFT,
    "$Forwarded": FORWARDED,
}
_BY_LOWER = {name.lower(): bit for name, bit in SYSTEM_FLAGS.items()}
_NAME_OF_BIT = {bit: name for name, bit in SYSTEM_FLAGS.items()}

LETTER_BITS = {"S": SEEN, "R": ANSWERED, "F": FLAGGED, "T": DELETED, "D": DRAFT, "P": FORWARDED}
_LETTER_OF_BIT = {bit: letter for letter, bit in LETTER_BITS.items()}

MAX_LETTERS = 26
MAX_KEYWORD_LENGTH = 128  # a bound on what a client can make us store per keyword

# RFC 3501 §9: flag-keyword = atom; atom-specials are "(" ")" "{" SP CTL "%" "*" DQUOTE "\"
# and "]".  Non-ASCII is refused too: keywords are not UTF-8 even under RFC 6855.
_ATOM_SPECIALS = frozenset('(){ %*"\\]')


def _valid_keyword(name: str) -> bool:
    return (
        0 < len(name) <= MAX_KEYWORD_LENGTH
        and name.isascii()
        and all(" " < ch < "\x7f" and ch not in _ATOM_SPECIALS for ch in name)
    )


def parse_flags(flags: Iterable[str]) -> tuple[int, frozenset[str]]:
    """Split IMAP flags into (system-flag bits, keywords); ValueError for a flag we cannot store.

    ``\\Recent`` is refused (RFC 3501 §2.3.2: it cannot be altered by the client), as is any
    other backslash flag.
    """
    bits = 0
    keywords = set()
    for flag in flags:
        bit = _BY_LOWER.get(flag.lower())
        if bit is not None:
            bits |= bit
        elif flag.startswith("\\"):
            raise ValueError(f"cannot store flag {flag!r}")
        elif _valid_keyword(flag):
            keywords.add(flag)
        else:
            raise ValueError(f"invalid keyword {flag!r}")
    return bits, frozenset(keywords)


def join_keywords(keywords: Iterable[str]) -> str:
    """The index's text form of a keyword set: sorted, space-separated ("" for none)."""
    return " ".join(sorted(keywords))


def split_keywords(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


@lru_cache(maxsize=4096)
def imap_flags(bits: int, keywords: str) -> frozenset[str]:
    """IMAP flags of a message from its index columns (cached: folders share few combinations)."""
    names = {name for bit, name in _NAME_OF_BIT.items() if bits & bit}
    names.update(split_keywords(keywords))
    return frozenset(names)


def letters_of_bits(bits: int) -> str:
    return "".join(letter for bit, letter in _LETTER_OF_BIT.items() if bits & bit)


def bits_of_letters(letters: str) -> int:
    bits = 0
    for letter in letters:
        bits |= LETTER_BITS.get(letter, 0)
    return bits


class KeywordMap:
    """The ``dovecot-keywords`` letters of one folder, re-read when the file changes.

    Reading is safe at any time; ``assign`` must be called with the folder's uidlist lock
    held, since it rewrites the file.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / KEYWORDS_FILE
        self._stamp: tuple[int, int, int] | None = None
        self._names: dict[str, str] = {}  # letter -> name
        self._letters: dict[str, str] = {}  # name.lower() -> letter

    def refresh(self) -> None:
        """Re-read the file if it changed since the last look (one stat otherwise)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._names, self._letters = None, {}, {}
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        with open(self.path, "rb") as f:
            data = f.read()
        names: dict[str, str] = {}
        for raw in data.split(b"\n"):
            index, _, name = raw.decode("utf-8", "replace").partition(" ")
            # Skip what we could not have written ourselves rather than fail: the file is
            # shared with Dovecot and a torn line must not make a folder unreadable.
            if not index.isdigit() or not _valid_keyword(name):
                continue
            if int(index) < MAX_LETTERS:
                names.setdefault(string.ascii_lowercase[int(index)], name)
        self._names = names
        self._letters = {}
        for letter, name in sorted(names.items()):
            self._letters.setdefault(name.lower(), letter)
        self._stamp = stamp

    def names(self) -> list[str]:
        return [self._names[letter] for letter in sorted(self._names)]

    def canonical(self, keyword: str) -> str:
        """The spelling already in the file for ``keyword`` (matched case-insensitively).

        Keywords are matched without case the way system flags are, so that "junk" set by
        one client and "Junk" by another name one letter, not two.
        """
        letter = self._letters.get(keyword.lower())
        return self._names[letter] if letter else keyword

    def names_of(self, letters: str) -> set[str]:
        """Keyword names for the lowercase letters of a file name; unknown letters are dropped."""
        return {self._names[ch] for ch in letters if ch in self._names}

    def letters_of(self, keywords: Iterable[str]) -> str:
        """Letters for the keywords that have one (no assignment)."""
        return "".join(
            sorted(self._letters[k.lower()] for k in keywords if k.lower() in self._letters)
        )

    def has_letter(self, keyword: str) -> bool:
        return keyword.lower() in self._letters

    def assign(self, keywords: Iterable[str]) -> None:
        """Give letters to those ``keywords`` that lack one, while letters remain.

        Caller holds the uidlist lock: the file is re-read first, so a letter another process
        assigned a moment ago is seen and never handed out twice.
        """
        self.refresh()
        missing = sorted({k for k in keywords if k.lower() not in self._letters})
        free = [ch for ch in string.ascii_lowercase if ch not in self._names]
        if not missing or not free:
            return
        for keyword, letter in zip(missing, free, strict=False):
            self._names[letter] = keyword
        content = "".join(
            f"{string.ascii_lowercase.index(letter)} {name}\n"
            for letter, name in sorted(self._names.items())
        )
        tmp_dir = self.folder / "tmp"
        tmp = (tmp_dir if tmp_dir.is_dir() else self.folder) / f".{new_unique_name()}.keywords"
        write_file_atomic(self.path, content.encode("utf-8"), tmp)
        self._stamp = None
        self.refresh()
