"""Connections per client: how many at once, and how many new ones a minute, per service.

One client (an IPv4 address or an IPv6 /64) gets at most ``max_concurrent`` open connections and
``rate_per_minute`` new ones in any 60 seconds on each service; the totals per listener
(``[smtp] max_connections``, ``[imap] max_connections``, ...) stay with the listeners. The
concurrency cap keeps one client from holding every slot (each login delay holds one); the rate
cap stops a client that opens, guesses once and hangs up from costing us a TLS handshake and an
argon2 hash thousands of times a minute. Only admitted connections count towards the rate: a
client that backs off for a minute gets in again.
"""

from __future__ import annotations

import threading
import time
from collections import deque

RATE_WINDOW = 60.0
_MAX_KEYS = 100_000


class ConnectionLimits:
    def __init__(self, max_concurrent: int, rate_per_minute: int, clock=time.monotonic):
        self.max_concurrent = max_concurrent
        self.rate_per_minute = rate_per_minute
        self.clock = clock
        self._open: dict[tuple[str, str], int] = {}
        self._recent: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, service: str, key: str) -> str | None:
        """Count a new connection in, or say why not: "busy" or "rate"."""
        slot, now = (service, key), self.clock()
        with self._lock:
            if self._open.get(slot, 0) >= self.max_concurrent:
                return "busy"
            times = self._recent.get(slot)
            if times is not None:
                while times and times[0] <= now - RATE_WINDOW:
                    times.popleft()
                if len(times) >= self.rate_per_minute:
                    return "rate"
            elif len(self._recent) > _MAX_KEYS:
                self._recent = {k: t for k, t in self._recent.items()
                                if t and t[-1] > now - RATE_WINDOW}
            self._recent.setdefault(slot, deque()).append(now)
            self._open[slot] = self._open.get(slot, 0) + 1
        return None

    def release(self, service: str, key: str) -> None:
        slot = (service, key)
        with self._lock:
            left = self._open.get(slot, 0) - 1
            if left > 0:
                self._open[slot] = left
            else:
                self._open.pop(slot, None)

    def open_count(self, service: str, key: str) -> int:
        with self._lock:
            return self._open.get((service, key), 0)
