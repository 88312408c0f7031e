"""The columns of the sessions' views (``selected.Selected``): flag sets as 4-byte ids into
one process-wide table, and the snapshot of each big folder's columns that the views share,
read-only, until one of them changes its own.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING, NamedTuple

from server.imap.encode import flag_list

if TYPE_CHECKING:
    from server.imap.selected import Selected

_FLAG_SETS: dict[frozenset, frozenset] = {}


_FLAG_TABLE: list[frozenset] = []  # id -> flag set, for FlagColumn
_FLAG_IDS: dict[frozenset, int] = {}


def _shared(flags: frozenset) -> frozenset:
    """One object per distinct flag set in the whole process (there are few of them)."""
    return _FLAG_SETS.setdefault(flags, flags)


def _flag_id(flags: frozenset) -> int:
    fid = _FLAG_IDS.get(flags)
    if fid is None:
        fid = _FLAG_IDS[flags] = len(_FLAG_TABLE)
        _FLAG_TABLE.append(_shared(flags))
    return fid


class FlagColumn:
    """A list of flag sets stored as 4-byte ids into one process-wide table: a view of a
    100,000-message folder costs 400 KB here instead of 800 KB of pointers."""

    __slots__ = ("ids",)

    def __init__(self, flag_sets=()):
        self.ids = array("I", (_flag_id(frozenset(f)) for f in flag_sets))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> frozenset:
        return _FLAG_TABLE[self.ids[i]]

    def __setitem__(self, i: int, flags: frozenset) -> None:
        self.ids[i] = _flag_id(frozenset(flags))

    def __delitem__(self, i: int) -> None:
        del self.ids[i]

    def append(self, flags: frozenset) -> None:
        self.ids.append(_flag_id(frozenset(flags)))

    def __iter__(self):
        table = _FLAG_TABLE
        return (table[i] for i in self.ids)


class _Flags:
    """``view.flags[uid]``: the flags this session knows for a message."""

    __slots__ = ("view",)

    def __init__(self, view: Selected):
        self.view = view

    def __getitem__(self, uid: int) -> frozenset:
        i = self.view.index_of(uid)
        if i is None:
            raise KeyError(uid)
        return self.view.flag_sets[i]

    def get(self, uid: int, default=None):
        i = self.view.index_of(uid)
        return default if i is None else self.view.flag_sets[i]

    def __contains__(self, uid: int) -> bool:
        return self.view.index_of(uid) is not None

    def __setitem__(self, uid: int, flags: frozenset) -> None:
        i = self.view.index_of(uid)
        if i is None:
            raise KeyError(uid)
        self.view._own()
        self.view.flag_sets[i] = _shared(flags)


class _EncodedFlags(dict):
    """FlagColumn id -> ``FLAGS (...)``, each distinct set encoded when first asked for."""

    def __missing__(self, fid: int) -> bytes:
        encoded = self[fid] = b"FLAGS " + flag_list(sorted(_FLAG_TABLE[fid]))
        return encoded


class _Snapshot(NamedTuple):
    uidvalidity: int
    modseq: int
    uidnext: int
    # Read-only memoryviews (format "I") that views use as their columns until they change
    # one (``Selected._own``): a write to a shared column raises instead of reaching others.
    uids: memoryview
    ids: memoryview  # FlagColumn ids: the table behind them only grows, so they stay valid


def _frozen(column: array) -> memoryview:
    return memoryview(column.tobytes()).cast("I")


def _thawed(column: array | memoryview) -> array:
    copy = array("I")
    copy.frombytes(column.cast("B") if isinstance(column, memoryview) else column)
    return copy


class _Snapshots:
    """The view the last SELECT of each big folder loaded, for the next SELECT in this
    process: it shares the columns (2 x 4 bytes a message; copied when it changes one) and
    applies only the changes since their MODSEQ instead of reading every row again.  Keyed
    by the FolderIndex object, which is replaced when the folder is deleted or renamed; the
    least recently used go first."""

    MIN_MESSAGES = 1000  # smaller folders load in a few milliseconds anyway
    MAX_FOLDERS = 64  # at most 64 x 800 KB for 100,000-message folders

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_folder: OrderedDict[object, _Snapshot] = OrderedDict()

    def get(self, folder) -> _Snapshot | None:
        with self._lock:
            snap = self._by_folder.get(folder)
            if snap is not None:
                self._by_folder.move_to_end(folder)
            return snap

    def drop(self, folder) -> None:
        with self._lock:
            self._by_folder.pop(folder, None)

    def __setitem__(self, folder, snap: _Snapshot) -> None:
        with self._lock:
            self._by_folder[folder] = snap
            self._by_folder.move_to_end(folder)
            while len(self._by_folder) > self.MAX_FOLDERS:
                self._by_folder.popitem(last=False)


_SNAPSHOTS = _Snapshots()
