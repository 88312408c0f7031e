"""Temporary bans of clients that keep failing to log in.

A client (an IPv4 address, or an IPv6 /64: ``authlimit.client_key``) with ``ban_after`` failed
logins on any service within ``WINDOW`` is banned for ``ban_time`` seconds: every service then
refuses its connections before reading a byte of a password. The growing delay of
``authlimit`` already makes guessing slow; the ban ends it, and also frees the connection
slots a patient guesser would otherwise hold while it sleeps through each delay.

Bans are kept in ``<data_dir>/abuse-bans.json`` (atomic write at each new ban), so a restart
does not forgive a brute-forcer; the failure counts behind them are in memory only (a restart
forgives at most ``ban_after - 1`` guesses per client).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections import deque
from pathlib import Path

from maildir.safeio import atomic_write
from server.authlimit import WINDOW, client_key

log = logging.getLogger("mailstead.abuse")

_MAX_KEYS = 100_000  # bound memory under a flood of distinct clients


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # a dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d
    return addr


class BanList:
    def __init__(self, ban_after: int, ban_time: float, allow: tuple[str, ...] = (),
                 state_file: Path | None = None, clock=time.time):
        self.clock = clock
        self.state_file = state_file
        self._failures: dict[str, deque[float]] = {}
        self._bans: dict[str, float] = {}  # client key -> until (wall clock, survives restarts)
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self.configure(ban_after, ban_time, allow)
        self._load()

    def configure(self, ban_after: int, ban_time: float, allow: tuple[str, ...]) -> None:
        self.ban_after = ban_after
        self.ban_time = ban_time
        self.allow = tuple(ipaddress.ip_network(net, strict=False) for net in allow)

    def allowed(self, ip: str) -> bool:
        addr = _address(ip)
        return addr is not None and any(addr in net for net in self.allow)

    def banned_until(self, ip: str) -> float | None:
        """When the ban on ``ip`` ends, or None when it is not banned."""
        key = client_key(ip)
        with self._lock:
            until = self._bans.get(key)
            if until is None:
                return None
            if until <= self.clock():
                del self._bans[key]
                return None
        return None if self.allowed(ip) else until

    def failure(self, ip: str) -> tuple[str, float, int] | None:
        """Count a failed login; when it earns a ban: (client key, until, failures)."""
        if not self.ban_after or self.allowed(ip):
            return None
        key, now = client_key(ip), self.clock()
        with self._lock:
            if len(self._failures) > _MAX_KEYS:
                self._failures.clear()
            times = self._failures.setdefault(key, deque())
            while times and times[0] <= now - WINDOW:
                times.popleft()
            times.append(now)
            if len(times) < self.ban_after:
                return None
            del self._failures[key]  # the ban is the consequence; after it, count afresh
            if len(self._bans) > _MAX_KEYS:
                self._bans = {k: u for k, u in self._bans.items() if u > now}
            until = self._bans[key] = now + self.ban_time
            failures = len(times)
        self._save()
        return key, until, failures

    def bans(self) -> dict[str, float]:
        now = self.clock()
        with self._lock:
            return {key: until for key, until in self._bans.items() if until > now}

    # --- persistence ---

    def _load(self) -> None:
        if self.state_file is None:
            return
        try:
            data = json.loads(self.state_file.read_text())
            bans = {str(k): float(v) for k, v in data["bans"].items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            # Losing the ban list is better than not starting: bans are a defence in depth.
            log.error("cannot read %s (%s); starting without bans", self.state_file, err)
            return
        now = self.clock()
        self._bans = {key: until for key, until in bans.items() if until > now}
        if self._bans:
            log.info("%d ban(s) still in force from %s", len(self._bans), self.state_file)

    def _save(self) -> None:
        if self.state_file is None:
            return
        # One writer at a time, each writing the list as it is then: two threads banning at
        # once cannot leave the older list on disk.
        with self._save_lock:
            try:
                atomic_write(self.state_file,
                             json.dumps({"version": 1, "bans": self.bans()}, indent=1))
            except OSError as err:
                log.error("cannot save bans to %s: %s", self.state_file, err)
