"""Slowing down password guessing: failed logins per client IP and per account.

Used by every service that takes a password (submission now; IMAP, POP3 and the admin panel
later). After ``FREE_FAILURES`` failures within ``WINDOW`` seconds, by one IP or against one
account, each further failure is answered only after a delay that doubles up to ``MAX_DELAY``.
Both keys matter: one IP trying many accounts (spraying), many IPs trying one account
(a botnet). In memory only: a restart forgives, which is fine for a delay.
"""

from __future__ import annotations

import time
from collections import deque

WINDOW = 15 * 60
FREE_FAILURES = 2
MAX_DELAY = 30.0
_MAX_KEYS = 100_000  # bound memory under a flood of distinct IPs/accounts


class AuthThrottle:
    def __init__(self, base_delay: float = 1.0):
        self.base_delay = base_delay
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] < now - WINDOW:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def failure(self, ip: str, account: str, now: float | None = None) -> float:
        """Record a failed login; return how long to wait before answering it."""
        now = time.monotonic() if now is None else now
        if len(self._failures) > _MAX_KEYS:
            self._failures.clear()
        counts = []
        for key in (f"ip:{ip}", f"user:{account.lower()}"):
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times
            counts.append(len(times))
        excess = max(counts) - FREE_FAILURES
        if excess <= 0:
            return 0.0
        return min(self.base_delay * 2 ** (excess - 1), MAX_DELAY)

    def success(self, ip: str, account: str) -> None:
        """A right password clears the account's record. Not the IP's: an attacker holding one
        valid account must not be able to reset the counter of the IP it sprays from."""
        self._failures.pop(f"user:{account.lower()}", None)
