"""Greylisting: a new (client network, sender, recipient) is told to come back later.

A real MTA queues and retries a 451; most spam software fires once and moves on. The client is
keyed by its network (IPv4 /24, IPv6 /64), not its address, because big senders retry from
another host of the same pool. A retry after ``[spam] greylist_delay`` and within a day passes,
and the triple is then let through at once for 35 days from its last use; a network that passed
``greylist_auto_allow`` times is not greylisted any more. The state lives in
``<data_dir>/greylist.sqlite3`` (WAL, 0600); every query runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

log = logging.getLogger("mailstead.spam")

RETRY_WINDOW = 24 * 3600.0  # a first attempt not retried within a day is forgotten
PASSED_LIFETIME = 35 * 24 * 3600.0  # longer than a monthly newsletter's interval
PRUNE_EVERY = 3600.0
BUSY_TIMEOUT = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triples (
    network TEXT NOT NULL, sender TEXT NOT NULL, rcpt TEXT NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, passed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (network, sender, rcpt)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS networks (
    network TEXT PRIMARY KEY, passes INTEGER NOT NULL, last_pass REAL NOT NULL) WITHOUT ROWID;
"""


def client_network(ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


class Greylist:
    def __init__(self, path: Path, *, delay: float, auto_allow: int = 5,
                 executor: Executor | None = None, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.delay = delay
        self.auto_allow = auto_allow
        self.executor = executor
        self.clock = clock
        self._lock = threading.Lock()  # one connection, used by one worker thread at a time
        self._conn: sqlite3.Connection | None = None
        self._pruned = 0.0

    async def check(self, ip: str, sender: str, rcpt: str) -> bool:
        """True if the message may go on; False: answer 451 4.7.1 to this recipient."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.check_sync, ip, sender, rcpt)

    def check_sync(self, ip: str, sender: str, rcpt: str) -> bool:
        network = client_network(ip)
        key = (network, (sender or "<>").lower(), rcpt.lower())
        with self._lock:
            conn = self._connect()
            now = self.clock()
            conn.execute("BEGIN IMMEDIATE")
            try:
                allowed = self._decide(conn, key, now)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if now - self._pruned >= PRUNE_EVERY:
                self._prune(conn, now)
        if not allowed:
            log.info("greylisted %s from %s: <%s> -> <%s>", network, ip, key[1], key[2])
        return allowed

    def _decide(self, conn: sqlite3.Connection, key: tuple[str, str, str], now: float) -> bool:
        network = key[0]
        if self.auto_allow:
            row = conn.execute("SELECT passes, last_pass FROM networks WHERE network = ?",
                               (network,)).fetchone()
            if row and row[0] >= self.auto_allow and now - row[1] < PASSED_LIFETIME:
                return True
        row = conn.execute(
            "SELECT first_seen, last_seen, passed FROM triples "
            "WHERE network = ? AND sender = ? AND rcpt = ?", key).fetchone()
        if row is not None:
            first_seen, last_seen, passed = row
            if passed and now - last_seen < PASSED_LIFETIME:
                conn.execute("UPDATE triples SET last_seen = ? WHERE network = ? AND sender = ? "
                             "AND rcpt = ?", (now, *key))
                return True
            if not passed and self.delay <= now - first_seen < RETRY_WINDOW:
                conn.execute("UPDATE triples SET last_seen = ?, passed = 1 WHERE network = ? "
                             "AND sender = ? AND rcpt = ?", (now, *key))
                conn.execute(
                    "INSERT INTO networks (network, passes, last_pass) VALUES (?, 1, ?) "
                    "ON CONFLICT (network) DO UPDATE SET passes = passes + 1, last_pass = ?",
                    (network, now, now))
                return True
            if not passed and now - first_seen < self.delay:
                # Too early: the clock keeps running from the first attempt, so a client that
                # retries every minute gets in after the delay like one that waits.
                conn.execute("UPDATE triples SET last_seen = ? WHERE network = ? AND sender = ? "
                             "AND rcpt = ?", (now, *key))
                return False
        conn.execute(
            "INSERT INTO triples (network, sender, rcpt, first_seen, last_seen, passed) "
            "VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (network, sender, rcpt) DO UPDATE SET "
            "first_seen = excluded.first_seen, last_seen = excluded.last_seen, passed = 0",
            (*key, now, now))
        return False

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        self._pruned = now
        conn.execute("DELETE FROM triples WHERE (passed = 0 AND first_seen < ?) "
                     "OR (passed = 1 AND last_seen < ?)",
                     (now - RETRY_WINDOW, now - PASSED_LIFETIME))
        conn.execute("DELETE FROM networks WHERE last_pass < ?", (now - PASSED_LIFETIME,))

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                # Created by us first so that it is 0600 whatever the umask; SQLite gives its
                # -wal and -shm files the same permissions.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 0o600))
            except FileExistsError:
                pass
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # losing the last triple costs one retry
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def count(self) -> tuple[int, int]:
        """(triples, networks) stored; for tests and ``mailstead`` diagnostics."""
        with self._lock:
            conn = self._connect()
            return (conn.execute("SELECT count(*) FROM triples").fetchone()[0],
                    conn.execute("SELECT count(*) FROM networks").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
