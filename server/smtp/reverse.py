"""The client's verified reverse name, remembered per IP address for a few seconds.

Every connection asks at EHLO (``BaseHandler._start_reverse_lookup``). The resolver caches the
DNS answers, but the question is still built, looked up and checked in Python every time: a
tenth of an MX worker's CPU per message when one sender opens connection after connection.
Here the answer is kept for ``TTL`` seconds: within that a connection's lookup is an already
finished future. Short, because the name can change, and a failed lookup (which gives None)
should be retried soon; a busy sender connects far more often than that.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

TTL = 10.0
MAX_ENTRIES = 4096


class ReverseNames:
    def __init__(self, lookup: Callable[[str], Awaitable[str | None]], ttl: float = TTL,
                 max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic):
        self.lookup = lookup  # ip -> verified name or None (never raises)
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self.names: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    def start(self, ip: str) -> asyncio.Future:
        """A future of the name of ``ip``: done at once when it is known, else a new lookup.
        Each caller gets its own future, so cancelling one (the connection ended) leaves the
        others alone."""
        now = self.clock()
        known = self.names.get(ip)
        if known is not None and known[0] > now:
            future = asyncio.get_running_loop().create_future()
            future.set_result(known[1])
            return future
        task = asyncio.ensure_future(self.lookup(ip))
        task.add_done_callback(lambda done: self._remember(ip, done))
        return task

    def _remember(self, ip: str, done: asyncio.Future) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        now = self.clock()
        names = self.names
        names[ip] = (now + self.ttl, done.result())
        names.move_to_end(ip)  # in order of expiry: the oldest first
        while names:
            expires = next(iter(names.values()))[0]
            if expires > now and len(names) <= self.max_entries:
                break
            names.popitem(last=False)
