"""The idle and login deadlines of a connection's reads (IMAP, POP3), with one timer.

``asyncio.timeout`` around each read costs a Timeout object, a timer handle and its
cancellation per command, and ``asyncio.wait_for`` a whole task per line: a tenth of what a
small command costs.  Here a connection has one timer, moved only when a deadline comes
earlier than the one it is set for; when it fires during a read whose deadline has passed,
it ends the stream (``feed_eof``), so the read returns what it has or the end, and
``timed_out`` tells the caller to say goodbye.  A deadline that moved later re-arms it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class ReadTimer:
    def __init__(self, reader: asyncio.StreamReader) -> None:
        """Made in the connection's task: the loop is looked up once, not per read
        (``asyncio.get_running_loop`` costs a getpid() system call each time)."""
        self.reader = reader
        self.loop = asyncio.get_running_loop()
        self.timed_out = False
        self._deadline = 0.0
        self._reading = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    async def wait(self, read: Awaitable[T], deadline: float) -> T:
        """``await read`` (a read of ``reader``), ended at ``deadline`` (the loop's time)."""
        loop = self.loop
        self._deadline = deadline
        if self._timer is None or self._timer_at > deadline:
            self._arm(loop)
        self._reading = True
        try:
            return await read
        finally:
            self._reading = False

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = self._deadline
        self._timer = loop.call_at(self._deadline, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if not self._reading:
            return  # the next read arms it again
        if loop.time() >= self._deadline:
            self.timed_out = True
            self.reader.feed_eof()
        else:
            self._arm(loop)
