"""Linux inotify, so that IDLE hears about other programs' Maildir changes without polling.

Deliveries and changes made in this process are announced through the change hub directly;
what mutt, a restored backup or another mail program does to a folder shows up as directory
events here. Only folders with someone idling in them are watched (``new/`` and ``cur/``),
with a count per folder. Without inotify (another OS, or the watch limit reached) IDLE falls
back to looking at the disk every few seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import struct
from pathlib import Path

log = logging.getLogger("mailstead.imap")

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# Files appearing, disappearing or being renamed: deliveries, flag changes, expunges.
MASK = 0x00000100 | 0x00000200 | 0x00000040 | 0x00000080  # CREATE DELETE MOVED_FROM MOVED_TO
_EVENT = struct.Struct("iIII")


class Watcher:
    """Calls ``on_change(key)`` when a watched folder's new/ or cur/ changes."""

    def __init__(self, loop, on_change):
        self.on_change = on_change
        self.loop = loop
        self.fd = -1
        self._by_wd: dict[int, object] = {}
        self._wds: dict[object, list[int]] = {}
        self._count: dict[object, int] = {}
        libc_name = ctypes.util.find_library("c")
        try:
            self._libc = ctypes.CDLL(libc_name, use_errno=True)
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            fd = -1
        if fd < 0:
            log.info("inotify unavailable; IDLE will look at the disk periodically")
            return
        self.fd = fd
        loop.add_reader(fd, self._read)

    @property
    def available(self) -> bool:
        return self.fd >= 0

    def watch(self, key, folder: Path) -> bool:
        """Start (or count another) watch of ``folder``; False if it could not be watched."""
        if not self.available:
            return False
        if key in self._count:
            self._count[key] += 1
            return True
        wds = []
        for sub in ("new", "cur"):
            wd = self._libc.inotify_add_watch(self.fd, str(folder / sub).encode(), MASK)
            if wd < 0:
                log.warning("cannot watch %s: %s", folder / sub,
                            os.strerror(ctypes.get_errno()))
                for w in wds:
                    self._libc.inotify_rm_watch(self.fd, w)
                return False
            wds.append(wd)
            self._by_wd[wd] = key
        self._wds[key] = wds
        self._count[key] = 1
        return True

    def unwatch(self, key) -> None:
        count = self._count.get(key)
        if count is None:
            return
        if count > 1:
            self._count[key] = count - 1
            return
        del self._count[key]
        for wd in self._wds.pop(key, []):
            self._by_wd.pop(wd, None)
            self._libc.inotify_rm_watch(self.fd, wd)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        keys = set()
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + length
            key = self._by_wd.get(wd)
            if key is not None:
                keys.add(key)
        for key in keys:
            self.on_change(key)

    def close(self) -> None:
        if self.available:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
