"""Server-side session records for the panel.

The cookie is signed by Flask, but a signed cookie alone cannot be taken back: signing out
would leave a copied cookie valid until it expires. So each login also makes a random session
id, stored here as a SHA-256 hash (a copy of this file gives no live session), and the gate
accepts the cookie only while its id is here. Signing out, a password change and an admin's
password reset remove ids; idle ones expire.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_address ON sessions(address);
"""
TOUCH_EVERY = 60.0  # seconds: last_seen is written at most this often per session


def _hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class SessionStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        conn = self._conn()
        os.chmod(self.path, 0o600)
        conn.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def create(self, address: str) -> str:
        sid = secrets.token_urlsafe(32)
        now = time.time()
        self._conn().execute("INSERT INTO sessions VALUES (?, ?, ?, ?)",
                             (_hash(sid), address.lower(), now, now))
        return sid

    def valid(self, sid: str | None, address: str, max_idle: float) -> bool:
        if not sid:
            return False
        now = time.time()
        conn = self._conn()
        row = conn.execute("SELECT address, last_seen FROM sessions WHERE id_hash=?",
                           (_hash(sid),)).fetchone()
        if row is None or row[0] != address.lower():
            return False
        if now - row[1] > max_idle:
            conn.execute("DELETE FROM sessions WHERE id_hash=?", (_hash(sid),))
            return False
        if now - row[1] > TOUCH_EVERY:
            conn.execute("UPDATE sessions SET last_seen=? WHERE id_hash=?", (now, _hash(sid)))
        return True

    def revoke(self, sid: str | None) -> None:
        if sid:
            self._conn().execute("DELETE FROM sessions WHERE id_hash=?", (_hash(sid),))

    def revoke_user(self, address: str, *, keep: str | None = None) -> int:
        """End every session of ``address`` except ``keep`` (the one making the change)."""
        keep_hash = _hash(keep) if keep else ""
        cur = self._conn().execute(
            "DELETE FROM sessions WHERE address=? AND id_hash != ?", (address.lower(), keep_hash))
        return cur.rowcount

    def prune(self, max_idle: float) -> None:
        self._conn().execute("DELETE FROM sessions WHERE last_seen < ?",
                             (time.time() - max_idle,))

    def count(self, address: str) -> int:
        return self._conn().execute("SELECT count(*) FROM sessions WHERE address=?",
                                    (address.lower(),)).fetchone()[0]
