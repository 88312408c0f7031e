"""The account store: domains, mailboxes (users) and aliases in SQLite (WAL mode); app
passwords, API tokens and TOTP come from the server.credentials mixin.

Addresses are stored normalised (lower-case local part, IDNA domain), so every lookup is an
exact match. Passwords are argon2id hashes; a hash made with older parameters is replaced at the
next successful login. Each thread gets its own connection: the MX looks recipients up on the
event loop while the CLI or the admin panel may write from another process.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import argon2

from maildir import create_maildir, quota
from maildir.index_quick import QuickRows
from maildir.safeio import make_private_dir
from server.accounterrors import (
    AccountError,
    AliasLoop,
    MailboxDisabled,
    NotLocal,
    UnknownRecipient,
)
from server.addresses import (
    Address,
    AddressError,
    normalize_domain,
    parse_address,
    split_tag,
    validate_mailbox_local,
)
from server.credentials import ApiToken as ApiToken  # re-exported, as are the exceptions
from server.credentials import AppPassword as AppPassword
from server.credentials import Credentials

# Each schema version's statements. initialise() applies those a database lacks, all in one
# transaction: a new database runs them all, so upgrades and fresh installs share one path.
# Never edit a released version; add the next one. Version 1's statements say IF NOT EXISTS
# because databases from before this list may have its tables but no version recorded.
MIGRATIONS: dict[int, str] = {1: """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    local TEXT NOT NULL,
    domain TEXT NOT NULL REFERENCES domains(name),
    password TEXT NOT NULL,
    quota_bytes INTEGER NOT NULL DEFAULT 0,
    is_admin INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    maildir TEXT NOT NULL,
    created INTEGER NOT NULL,
    UNIQUE (local, domain)
);
CREATE TABLE IF NOT EXISTS aliases (
    id INTEGER PRIMARY KEY,
    local TEXT NOT NULL,          -- '' is the catch-all of the domain
    domain TEXT NOT NULL REFERENCES domains(name),
    destination TEXT NOT NULL,
    created INTEGER NOT NULL,
    UNIQUE (local, domain, destination)
);
""", 2: """
-- Sessions of the admin panel older than this are invalid (REAL: sub-second, so a session made
-- just before a password change in the same second does not survive it).
ALTER TABLE users ADD COLUMN password_changed REAL NOT NULL DEFAULT 0;
UPDATE users SET password_changed = created;
-- Base32 (RFC 6238); NULL while TOTP is off.
ALTER TABLE users ADD COLUMN totp_secret TEXT;
-- The last time step whose code was accepted: no code is accepted twice (RFC 6238 §5.2).
ALTER TABLE users ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT 0;
CREATE TABLE app_passwords (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    lookup TEXT NOT NULL UNIQUE,  -- the first group of the password, to find its one hash
    hash TEXT NOT NULL,           -- argon2 of the rest
    created INTEGER NOT NULL,
    last_used INTEGER
);
CREATE INDEX app_passwords_user ON app_passwords(user_id);
CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    lookup TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL,
    created INTEGER NOT NULL,
    last_used INTEGER
);
CREATE INDEX api_tokens_user ON api_tokens(user_id);
CREATE TABLE recovery_codes (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    lookup TEXT NOT NULL,
    hash TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    UNIQUE (user_id, lookup)
);
"""}
SCHEMA_VERSION = max(MIGRATIONS)

# RFC 5321 §4.5.1 requires postmaster at every domain; RFC 2142 asks for abuse. Unless the owner
# made them as mailboxes or aliases, both reach the admins.
ROLE_ADDRESSES = ("postmaster", "abuse")
MAX_ALIAS_DEPTH = 8
MAX_QUOTA = 2**62  # SQLite integers are 64-bit signed; no disk is near this


@dataclass(frozen=True, slots=True)
class User:
    id: int
    local: str
    domain: str
    maildir: Path
    quota_bytes: int
    is_admin: bool
    disabled: bool
    password_changed: float = 0.0  # epoch seconds; the panel drops sessions older than this
    totp: bool = False  # TOTP second factor on (for the panel; mail protocols don't ask for it)

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"


@dataclass(frozen=True, slots=True)
class Alias:
    source: str  # "@domain" for a catch-all
    destinations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Resolution:
    mailboxes: tuple[User, ...]
    external: tuple[str, ...]


class AccountStore(Credentials):
    def __init__(self, db_path: Path, mail_root: Path, *, recipient_delimiter: str = "+",
                 min_password_length: int = 10, hasher: argon2.PasswordHasher | None = None):
        self.db_path = Path(db_path)
        self.mail_root = Path(mail_root)
        self.recipient_delimiter = recipient_delimiter
        self.min_password_length = min_password_length
        self.hasher = hasher or argon2.PasswordHasher()
        self._local = threading.local()
        # Every RCPT looks up its domain and mailbox: two SQLite statements were a tenth of
        # an MX worker's CPU per message. Their rows are kept until anything is committed
        # (maildir/index_quick.py: the WAL index's header, a pread, says so).
        self._quick = QuickRows(self.db_path)

    @functools.cached_property
    def _dummy_hash(self) -> str:
        # Verifying against this when the user does not exist keeps failed logins equally slow
        # whether or not the address exists, so timing does not reveal mailbox names.
        return self.hasher.hash("mailstead-timing-equaliser")

    @classmethod
    def from_config(cls, config) -> AccountStore:
        store = cls(config.db_path, config.mail_root)
        store.apply_config(config)
        return store

    def apply_config(self, config) -> None:
        """Take the ``[accounts]`` settings (at start and on reload)."""
        acc = config.accounts
        self.recipient_delimiter = acc.recipient_delimiter
        self.min_password_length = acc.min_password_length
        hasher = argon2.PasswordHasher(
            time_cost=acc.argon2_time_cost, memory_cost=acc.argon2_memory_kib,
            parallelism=acc.argon2_parallelism, type=argon2.Type.ID)
        if _params(hasher) != _params(self.hasher):
            self.hasher = hasher
            self.__dict__.pop("_dummy_hash", None)

    # --- connection ---

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=10, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def initialise(self) -> None:
        """Create the schema, or upgrade an older one, in one transaction (idempotent)."""
        self._conn()
        # Password hashes live here; SQLite gives its -wal/-shm files the same mode.
        os.chmod(self.db_path, 0o600)
        with self._write() as conn:
            version = _schema_version(conn)
            if version > SCHEMA_VERSION:
                raise AccountError(f"{self.db_path} has schema version {version}, newer than "
                                   f"this mailstead ({SCHEMA_VERSION}); upgrade mailstead")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                # Statement by statement: executescript() would commit the transaction.
                for statement in _statements(MIGRATIONS[step]):
                    conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self._quick.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # --- domains ---

    def add_domain(self, name: str) -> str:
        domain = _domain(name)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM domains WHERE name=?", (domain,)).fetchone():
                raise AccountError(f"domain {domain} already exists")
            conn.execute("INSERT INTO domains VALUES (?, ?)", (domain, int(time.time())))
        return domain

    def delete_domain(self, name: str) -> None:
        domain = _domain(name)
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM domains WHERE name=?", (domain,)).fetchone():
                raise AccountError(f"no domain {domain}")
            users = conn.execute("SELECT count(*) FROM users WHERE domain=?", (domain,)).fetchone()
            aliases = conn.execute("SELECT count(*) FROM aliases WHERE domain=?",
                                   (domain,)).fetchone()
            if users[0] or aliases[0]:
                raise AccountError(f"domain {domain} still has {users[0]} mailbox(es) and "
                                   f"{aliases[0]} alias destination(s); delete them first")
            conn.execute("DELETE FROM domains WHERE name=?", (domain,))

    def list_domains(self) -> list[str]:
        rows = self._conn().execute("SELECT name FROM domains ORDER BY name")
        return [r[0] for r in rows]

    def is_local_domain(self, domain: str) -> bool:
        return self._quick.row(self._conn(), "SELECT 1 FROM domains WHERE name=?",
                               domain) is not None

    # --- users ---

    def _check_password(self, password: str) -> None:
        if len(password) < self.min_password_length:
            raise AccountError(
                f"password too short: at least {self.min_password_length} characters")
        if any(ord(c) < 32 for c in password):
            raise AccountError("password must not contain control characters")

    def add_user(self, address: str, password: str, *, admin: bool = False,
                 quota_bytes: int = 0) -> User:
        local, domain = self._new_address(address)
        self._check_password(password)
        _check_quota(quota_bytes)
        pw_hash = self.hasher.hash(password)
        rel = f"{domain}/{local}"
        with self._write() as conn:
            self._require_domain(conn, domain)
            if self._user_row(conn, local, domain):
                raise AccountError(f"mailbox {local}@{domain} already exists")
            if conn.execute("SELECT 1 FROM aliases WHERE local=? AND domain=?",
                            (local, domain)).fetchone():
                raise AccountError(f"{local}@{domain} is an alias; delete the alias first")
            maildir = self.mail_root / rel
            make_private_dir(maildir.parent)
            create_maildir(maildir)
            now = time.time()
            conn.execute(
                "INSERT INTO users (local, domain, password, quota_bytes, is_admin, maildir,"
                " created, password_changed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (local, domain, pw_hash, quota_bytes, int(admin), rel, int(now), now))
        user = self.get_user(f"{local}@{domain}")
        assert user is not None
        return user

    def get_user(self, address: str) -> User | None:
        try:
            addr = parse_address(address)
        except AddressError:
            return None
        row = self._user_row(self._conn(), addr.folded_local, addr.domain)
        return self._user(row) if row else None

    def list_users(self, domain: str | None = None) -> list[User]:
        sql = "SELECT * FROM users"
        args: tuple = ()
        if domain:
            sql += " WHERE domain=?"
            args = (_domain(domain),)
        rows = self._conn().execute(sql + " ORDER BY domain, local", args)
        return [self._user(r) for r in rows]

    def set_password(self, address: str, password: str) -> None:
        user = self._existing_user(address)
        self._check_password(password)
        with self._write() as conn:
            conn.execute("UPDATE users SET password=?, password_changed=? WHERE id=?",
                         (self.hasher.hash(password), time.time(), user.id))

    def update_user(self, address: str, *, admin: bool | None = None,
                    quota_bytes: int | None = None, disabled: bool | None = None) -> User:
        user = self._existing_user(address)
        if quota_bytes is not None:
            _check_quota(quota_bytes)
        changes = {"is_admin": admin, "quota_bytes": quota_bytes, "disabled": disabled}
        with self._write() as conn:
            for column, value in changes.items():
                if value is not None:
                    conn.execute(f"UPDATE users SET {column}=? WHERE id=?", (int(value), user.id))
        if quota_bytes is not None:
            quota.invalidate(user.maildir)
        return self._existing_user(address)

    def delete_user(self, address: str, *, purge: bool = False) -> Path | None:
        """Delete a mailbox. Its Maildir is moved aside (returned) unless ``purge``."""
        user = self._existing_user(address)
        dest = None
        # The Maildir goes first: if that fails the account is intact, never an account gone
        # with its mail still in place for the next mailbox of the same name to inherit.
        if user.maildir.exists():
            if purge:
                shutil.rmtree(user.maildir)
            else:
                # Keep the mail (a deleted mailbox is often a mistake), out of the way.
                stamp = f"{int(time.time())}.{secrets.token_hex(4)}"
                dest = self.mail_root.parent / "deleted" / user.domain / f"{user.local}.{stamp}"
                make_private_dir(dest.parent)
                user.maildir.rename(dest)
        with self._write() as conn:
            conn.execute("DELETE FROM users WHERE id=?", (user.id,))
        return dest

    def authenticate(self, address: str, password: str, *, app_passwords: bool = True,
                     now: float | None = None) -> User | None:
        """The user if the mailbox is enabled and ``password`` is its password or, with
        ``app_passwords``, one of its app passwords; else None. The admin panel passes
        app_passwords=False: a password handed to a phone must not open the panel."""
        try:
            addr = parse_address(address)
            row = self._user_row(self._conn(), addr.folded_local, addr.domain)
        except AddressError:
            row = None
        enabled_id = row["id"] if row is not None and not row["disabled"] else None
        # Every refusal costs the same argon2 verifications (one, or two with app passwords),
        # dummy hashes standing in for what is missing, so timing tells neither whether the
        # mailbox exists nor whether an app password's lookup id matched.
        stored = row["password"] if row is not None else self._dummy_hash
        if self._verify(stored, password) and enabled_id is not None:
            if self.hasher.check_needs_rehash(stored):
                with self._write() as conn:
                    conn.execute("UPDATE users SET password=? WHERE id=?",
                                 (self.hasher.hash(password), enabled_id))
            return self._user(row)
        if app_passwords and self._app_password_matches(enabled_id, password, now):
            return self._user(row)
        return None

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    # --- aliases ---

    def add_alias(self, source: str, destinations: list[str]) -> Alias:
        if not destinations:
            raise AccountError("an alias needs at least one destination")
        if source.startswith("@"):
            local, domain = "", _domain(source[1:])
        else:
            local, domain = self._new_address(source)
        dests = [self._destination(dest) for dest in destinations]
        with self._write() as conn:
            self._require_domain(conn, domain)
            if local and self._user_row(conn, local, domain):
                raise AccountError(f"{local}@{domain} is a mailbox; an alias cannot shadow it")
            for dest in dests:
                conn.execute("INSERT OR IGNORE INTO aliases (local, domain, destination, created)"
                             " VALUES (?, ?, ?, ?)", (local, domain, dest, int(time.time())))
        return self._alias(local, domain)

    def delete_alias(self, source: str, destination: str | None = None) -> None:
        local, domain = ("", _domain(source[1:])) if source.startswith("@") else _split(source)
        sql, args = "DELETE FROM aliases WHERE local=? AND domain=?", [local, domain]
        if destination is not None:
            sql += " AND destination=?"
            args.append(self._destination(destination))
        with self._write() as conn:
            if conn.execute(sql, args).rowcount == 0:
                raise AccountError(f"no such alias {source}" +
                                   (f" -> {destination}" if destination else ""))

    def list_aliases(self) -> list[Alias]:
        rows = self._conn().execute(
            "SELECT DISTINCT local, domain FROM aliases ORDER BY domain, local")
        return [self._alias(r["local"], r["domain"]) for r in rows]

    # --- delivery ---

    def resolve(self, addr: Address) -> Resolution:
        """The mailboxes and external addresses mail to ``addr`` goes to.

        Raises NotLocal (not one of our domains), UnknownRecipient, or MailboxDisabled.
        Order: exact mailbox or alias, then the address without its +tag, then the role
        addresses (postmaster, abuse) to the admins, then the domain's catch-all.
        """
        if addr.is_literal or not self.is_local_domain(addr.domain):
            raise NotLocal(f"{addr.domain} is not a local domain")
        mailboxes: dict[int, User] = {}
        external: list[str] = []
        self._expand(addr.folded_local, addr.domain, mailboxes, external, {addr.key}, 0)
        if not mailboxes and not external:
            raise UnknownRecipient(f"no mailbox {addr.key}")
        return Resolution(tuple(mailboxes.values()), tuple(external))

    def _expand(self, local: str, domain: str, mailboxes: dict[int, User], external: list[str],
                seen: set[str], depth: int) -> None:
        conn = self._conn()
        base, tag = split_tag(local, self.recipient_delimiter)
        for candidate in (local, base) if tag is not None else (local,):
            row = self._user_row(conn, candidate, domain)
            if row is not None:
                if row["disabled"]:
                    if depth == 0:
                        raise MailboxDisabled(f"{candidate}@{domain} is disabled")
                    return
                mailboxes.setdefault(row["id"], self._user(row))
                return
            dests = self._alias_dests(conn, candidate, domain)
            if dests:
                self._follow(dests, mailboxes, external, seen, depth)
                return
        if base in ROLE_ADDRESSES:
            # Before the catch-all: postmaster must always reach someone who runs the server
            # (RFC 5321 §4.5.1), even when the catch-all forwards elsewhere.
            admins = conn.execute("SELECT * FROM users WHERE is_admin=1 AND disabled=0").fetchall()
            for row in admins:
                mailboxes.setdefault(row["id"], self._user(row))
            if admins:
                return
        dests = self._alias_dests(conn, "", domain)
        if dests:
            self._follow(dests, mailboxes, external, seen, depth)

    def _follow(self, dests: list[str], mailboxes: dict[int, User], external: list[str],
                seen: set[str], depth: int) -> None:
        if depth >= MAX_ALIAS_DEPTH:
            raise AliasLoop("alias chain too deep")
        for dest in dests:
            if dest in seen:
                continue  # an alias loop; every member is already being delivered
            seen.add(dest)
            addr = parse_address(dest)
            if self.is_local_domain(addr.domain):
                self._expand(addr.folded_local, addr.domain, mailboxes, external, seen,
                             depth + 1)
            elif dest not in external:
                external.append(dest)

    def owns(self, user: User, address: str) -> bool:
        """May ``user`` send as ``address``? Yes for their own address, its plus-addresses,
        and any local address (alias, catch-all, role address) that delivers to them."""
        try:
            addr = parse_address(address)
            if addr.is_literal or not self.is_local_domain(addr.domain):
                return False
            return any(m.id == user.id for m in self.resolve(addr).mailboxes)
        except (AddressError, AccountError):
            return False

    # --- helpers ---

    def _new_address(self, address: str) -> tuple[str, str]:
        local, domain = _split(address)
        try:
            return validate_mailbox_local(local), domain
        except AddressError as err:
            raise AccountError(str(err)) from None

    def _destination(self, dest: str) -> str:
        """An alias destination as stored: local ones case-folded, external ones normalised."""
        addr = _parse(dest, "destination")
        return addr.key if self.is_local_domain(addr.domain) else str(addr)

    def _require_domain(self, conn: sqlite3.Connection, domain: str) -> None:
        if not conn.execute("SELECT 1 FROM domains WHERE name=?", (domain,)).fetchone():
            raise AccountError(f"{domain} is not a local domain; add it with "
                               f"'mailstead domain add {domain}'")

    def _existing_user(self, address: str) -> User:
        user = self.get_user(address)
        if user is None:
            raise AccountError(f"no mailbox {address}")
        return user

    def _user_row(self, conn: sqlite3.Connection, local: str, domain: str) -> sqlite3.Row | None:
        return self._quick.row(conn, "SELECT * FROM users WHERE local=? AND domain=?",
                               local, domain)

    @staticmethod
    def _alias_dests(conn: sqlite3.Connection, local: str, domain: str) -> list[str]:
        rows = conn.execute("SELECT destination FROM aliases WHERE local=? AND domain=?"
                            " ORDER BY id", (local, domain))
        return [r[0] for r in rows]

    def _alias(self, local: str, domain: str) -> Alias:
        dests = self._alias_dests(self._conn(), local, domain)
        return Alias(f"{local}@{domain}", tuple(dests))

    def _user(self, row: sqlite3.Row) -> User:
        return User(id=row["id"], local=row["local"], domain=row["domain"],
                    maildir=self.mail_root / row["maildir"], quota_bytes=row["quota_bytes"],
                    is_admin=bool(row["is_admin"]), disabled=bool(row["disabled"]),
                    password_changed=row["password_changed"], totp=row["totp_secret"] is not None)


def _schema_version(conn: sqlite3.Connection) -> int:
    """0 for a new database."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
                        ).fetchone():
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else 0


def _statements(script: str) -> Iterator[str]:
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
    assert not statement.strip("\n -"), "statement without ;"


def _params(hasher: argon2.PasswordHasher) -> tuple:
    return (hasher.time_cost, hasher.memory_cost, hasher.parallelism, hasher.type)


def _check_quota(quota_bytes: int) -> None:
    if not 0 <= quota_bytes < MAX_QUOTA:
        raise AccountError(f"quota must be between 0 (none) and {MAX_QUOTA - 1} bytes")


def _domain(name: str) -> str:
    try:
        return normalize_domain(name)
    except AddressError as err:
        raise AccountError(str(err)) from None


def _parse(address: str, what: str = "address") -> Address:
    try:
        addr = parse_address(address)
    except AddressError as err:
        raise AccountError(f"invalid {what} {address!r}: {err}") from None
    if addr.is_literal:
        raise AccountError(f"invalid {what} {address!r}: address literals not allowed")
    return addr


def _split(address: str) -> tuple[str, str]:
    addr = _parse(address)
    return addr.folded_local, addr.domain
