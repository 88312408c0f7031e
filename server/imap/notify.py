"""In-process change notifications: the MX and every IMAP session of a user share them.

When anything in this process changes a folder (a delivery, another session's STORE or
EXPUNGE), it calls ``changed(user, folder)``; sessions in IDLE on that folder wake at once and
sync, so a new message shows up within the delivery's own latency, never after a poll. Writers
outside this process (mutt, a restored backup) are caught by the index's directory checks on
inotify (``inotify.py``) for folders someone is idling in, else on the next NOOP.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

from server.imap.inotify import Watcher


class ChangeHub:
    def __init__(self) -> None:
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: Watcher | None = None
        self._watched: dict[asyncio.Event, tuple[str, str]] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watcher = Watcher(loop, lambda key: self._wake(*key))

    def subscribe(self, user: str, folder: str, directory: Path | None = None) -> asyncio.Event:
        """Wake ``event`` on changes; with ``directory``, changes by other programs too.
        ``event.watched`` says whether those arrive by inotify (else: poll the disk)."""
        event = asyncio.Event()
        event.watched = False
        self._waiters[(user, folder)].add(event)
        if directory is not None and self._watcher is not None:
            event.watched = self._watcher.watch((user, folder), directory)
            if event.watched:
                self._watched[event] = (user, folder)
        return event

    def unsubscribe(self, user: str, folder: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get((user, folder))
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[(user, folder)]
        key = self._watched.pop(event, None)
        if key is not None and self._watcher is not None:
            self._watcher.unwatch(key)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()

    def changed(self, user: str, folder: str) -> None:
        """Safe to call from any thread (deliveries run in worker threads)."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake(user, folder)
        else:
            loop.call_soon_threadsafe(self._wake, user, folder)

    def _wake(self, user: str, folder: str) -> None:
        for event in self._waiters.get((user, folder), ()):
            event.set()
