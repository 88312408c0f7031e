"""Slowing down password guessing: failed logins per client network and per account.

Used by every service that takes a password: submission, IMAP, POP3 and the admin panel. After
``FREE_FAILURES`` failures within ``WINDOW`` seconds, by one client (an IPv4 address or an IPv6
/64, what one customer typically gets) or against one account, every further login attempt
waits before its password is even checked, the wait doubling up to ``MAX_DELAY``.
Waiting *before* checking matters: if only failures were slowed, a guesser could hang up as soon
as no quick success came and try again at full speed. Both keys matter: one client trying many
accounts (spraying), many clients trying one account (a botnet). In memory only: a restart
forgives, which is fine for a delay. Each failure is also reported to the ``guard``
(``server.abuse.Guard``), which logs it for fail2ban and bans a client that keeps failing.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import deque

WINDOW = 15 * 60
FREE_FAILURES = 2
MAX_DELAY = 30.0
_MAX_KEYS = 100_000  # bound memory under a flood of distinct clients/accounts


def client_key(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return f"ip:{ip}"
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return f"ip:{addr.ipv4_mapped}"
        return f"net:{ipaddress.ip_network(f'{addr}/64', strict=False)}"
    return f"ip:{addr}"


class AuthThrottle:
    def __init__(self, base_delay: float = 1.0, guard=None):
        self.base_delay = base_delay
        self.guard = guard  # server.abuse.Guard, or None (a test app, a CLI tool)
        self._failures: dict[str, deque[float]] = {}
        # The mail services call from the event loop, the admin panel from its worker threads.
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] < now - WINDOW:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def _keys(self, ip: str, account: str) -> tuple[str, str]:
        return client_key(ip), f"user:{account}"

    def banned(self, ip: str) -> bool:
        """Whether the guard has banned ``ip``: asked before each login, so that a client
        banned meanwhile gets no more guesses on the connections it already holds."""
        return self.guard is not None and self.guard.is_banned(ip)

    def delay(self, ip: str, account: str, now: float | None = None) -> float:
        """How long to wait before checking this login attempt."""
        now = time.monotonic() if now is None else now
        with self._lock:
            failures = max(len(self._recent(key, now)) for key in self._keys(ip, account))
        if failures < FREE_FAILURES:
            return 0.0
        return min(self.base_delay * 2 ** (failures - FREE_FAILURES), MAX_DELAY)

    def failure(self, ip: str, account: str, now: float | None = None, *,
                service: str = "unknown", conn_id: str = "-") -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._failures) > _MAX_KEYS:
                self._failures.clear()
            for key in self._keys(ip, account):
                times = self._recent(key, now)
                times.append(now)
                self._failures[key] = times
        if self.guard is not None:
            self.guard.auth_failure(ip, account, service, conn_id)

    def success(self, ip: str, account: str) -> None:
        """A right password clears the account's record. Not the client's: an attacker
        holding one valid account must not be able to reset the counter it sprays under."""
        with self._lock:
            self._failures.pop(f"user:{account}", None)


def account_key(name: str) -> str:
    """The account a login names, as the throttle counts it (however it is spelt)."""
    from server.addresses import AddressError, parse_address

    try:
        return parse_address(name).key
    except AddressError:
        return name.lower()


async def check_password(throttle: AuthThrottle, accounts, executor, *, ip: str, name: str,
                         password: str, service: str, conn_id: str, log):
    """One password login (submission, IMAP, POP3): wait out the throttle's delay first (see the
    module docstring), check in a worker thread (argon2 is slow), count the outcome.
    Returns the user, or None after logging and counting the failure."""
    import asyncio

    account = account_key(name)
    delay = throttle.delay(ip, account)
    if delay:
        await asyncio.sleep(delay)
    user = await asyncio.get_running_loop().run_in_executor(
        executor, accounts.authenticate, name, password)
    if user is None:
        throttle.failure(ip, account, service=service, conn_id=conn_id)
        log.info("conn=%s auth failed user=%r from [%s] after a %.1fs wait", conn_id,
                 name[:100], ip, delay)
        return None
    throttle.success(ip, account)
    return user
