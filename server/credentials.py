"""A mailbox's credentials besides its password: app passwords, API tokens, and TOTP (RFC 6238)
as a second factor with recovery codes. Mixed into AccountStore, which owns the schema (see
MIGRATIONS in server.accounts), the connections and the argon2 hasher.

Every secret is random, shown once and stored only as an argon2 hash. Each starts with a lookup
id that is stored in clear, so a login costs one argon2 verification however many app passwords
or tokens exist, rather than one per stored hash; the part after it carries the entropy.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyotp

from server.accounterrors import AccountError

if TYPE_CHECKING:
    from server.accounts import User

# No 0/o or 1/l: app passwords are read off a screen and typed into a phone. 32 symbols, so each
# is 5 bits and secrets.choice draws them uniformly.
ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
GROUP = 4
# abcd-efgh-jkmn-pqrs-tuvw: the first group is the lookup id, the other 16 symbols are 80 bits.
APP_PASSWORD_LENGTH = 5 * GROUP
# Recovery codes (abcd-efgh-jkmn): lookup id, then 40 bits; guessing online also needs the
# password, and the argon2 hash makes 40 bits slow to search offline.
RECOVERY_CODE_LENGTH = 3 * GROUP
RECOVERY_CODES = 10
# mst_<16 hex lookup>_<40 hex = 160 bits>. The prefix lets secret scanners and people recognise
# a leaked token.
TOKEN_PREFIX = "mst_"
TOKEN_LOOKUP_HEX = 16
TOKEN_SECRET_HEX = 40
# RFC 6238 §5.2: accept codes one step (30 s) either side, for phones whose clocks drift.
TOTP_DRIFT_STEPS = 1
TOTP_DIGITS = 6  # what every authenticator app shows; recovery codes are longer
# RFC 4226 §4 R6: the shared secret MUST be at least 128 bits.
MIN_TOTP_SECRET_BYTES = 16
# last_used is a hint for the panel ("used 3 days ago"), not worth a write on every IMAP login.
LAST_USED_GRANULARITY = 60
MAX_NAME_LENGTH = 100


@dataclass(frozen=True, slots=True)
class AppPassword:
    id: int
    name: str
    created: float
    last_used: float | None  # None until first used; updated at most once a minute


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: int
    name: str
    created: float
    last_used: float | None


class Credentials:
    """AccountStore's app-password, API-token and TOTP methods. They use the store's ``hasher``,
    ``_conn``, ``_write``, ``_verify``, ``_dummy_hash``, ``_existing_user`` and ``_user``."""

    # --- app passwords ---

    def add_app_password(self, address: str, name: str) -> tuple[int, str]:
        """A new password for one device or app: (id, password), the password shown only now."""
        def make() -> tuple[str, str, str]:
            raw = _random(APP_PASSWORD_LENGTH)
            return raw[:GROUP], raw[GROUP:], _grouped(raw)
        return self._add_secret("app_passwords", address, name, make)

    def list_app_passwords(self, address: str) -> list[AppPassword]:
        return self._list_secrets("app_passwords", AppPassword, address)

    def revoke_app_password(self, address: str, id: int) -> None:
        self._revoke_secret("app_passwords", "app password", address, id)

    def _app_password_matches(self, user_id: int | None, password: str,
                              now: float | None) -> bool:
        """Is ``password`` one of the user's app passwords (None: no such enabled user)? Always
        exactly one argon2 verification, so timing does not tell whether the lookup id exists."""
        parsed = _parse_grouped(password, APP_PASSWORD_LENGTH)
        row = None
        if parsed is not None and user_id is not None:
            row = self._conn().execute(
                "SELECT * FROM app_passwords WHERE user_id=? AND lookup=?",
                (user_id, parsed[0])).fetchone()
        secret = parsed[1] if parsed is not None else password
        if not self._verify_row(row, secret):
            return False
        self._touch("app_passwords", row, secret, now)
        return True

    # --- API tokens ---

    def add_api_token(self, address: str, name: str) -> tuple[int, str]:
        """A new token for the admin panel's API: (id, token), the token shown only now."""
        def make() -> tuple[str, str, str]:
            lookup = secrets.token_hex(TOKEN_LOOKUP_HEX // 2)
            secret = secrets.token_hex(TOKEN_SECRET_HEX // 2)
            return lookup, secret, f"{TOKEN_PREFIX}{lookup}_{secret}"
        return self._add_secret("api_tokens", address, name, make)

    def list_api_tokens(self, address: str) -> list[ApiToken]:
        return self._list_secrets("api_tokens", ApiToken, address)

    def revoke_api_token(self, address: str, id: int) -> None:
        self._revoke_secret("api_tokens", "API token", address, id)

    def authenticate_token(self, token: str, *, now: float | None = None) -> User | None:
        """The token's user, unless the token is unknown or revoked or the mailbox disabled.
        One argon2 verification whatever the outcome."""
        parsed = _parse_token(token)
        conn = self._conn()
        row = None
        if parsed is not None:
            row = conn.execute("SELECT * FROM api_tokens WHERE lookup=?",
                               (parsed[0],)).fetchone()
        secret = parsed[1] if parsed is not None else token
        if not self._verify_row(row, secret):
            return None
        user = conn.execute("SELECT * FROM users WHERE id=?", (row["user_id"],)).fetchone()
        if user is None or user["disabled"]:
            return None
        self._touch("api_tokens", row, secret, now)
        return self._user(user)

    # --- shared by app passwords and tokens ---

    def _add_secret(self, table: str, address: str, name: str,
                    make: Callable[[], tuple[str, str, str]]) -> tuple[int, str]:
        user = self._existing_user(address)
        name = _check_name(name)
        for _ in range(20):
            lookup, secret, shown = make()
            secret_hash = self.hasher.hash(secret)
            try:
                with self._write() as conn:
                    cur = conn.execute(
                        f"INSERT INTO {table} (user_id, name, lookup, hash, created)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (user.id, name, lookup, secret_hash, int(time.time())))
            except sqlite3.IntegrityError as err:
                if "UNIQUE" not in str(err):
                    raise AccountError(f"no mailbox {user.address}") from None
                continue  # lookup id taken (about one in a million for app passwords): redraw
            return cur.lastrowid, shown
        raise AccountError("could not find a free lookup id; try again")

    def _list_secrets(self, table: str, cls: type, address: str) -> list:
        user = self._existing_user(address)
        rows = self._conn().execute(
            f"SELECT id, name, created, last_used FROM {table} WHERE user_id=? ORDER BY id",
            (user.id,))
        return [cls(*row) for row in rows]

    def _revoke_secret(self, table: str, what: str, address: str, id: int) -> None:
        user = self._existing_user(address)
        with self._write() as conn:
            # user_id in the condition: a user can only ever revoke their own.
            cur = conn.execute(f"DELETE FROM {table} WHERE id=? AND user_id=?", (id, user.id))
            if cur.rowcount == 0:
                raise AccountError(f"no {what} {id} for {user.address}")

    def _verify_row(self, row: sqlite3.Row | None, secret: str) -> bool:
        """Does ``secret`` match the row's hash? Without a row, the dummy hash is verified and
        the answer is no: one argon2 verification either way, so timing reveals nothing."""
        stored = row["hash"] if row is not None else self._dummy_hash
        return self._verify(stored, secret) and row is not None

    def _touch(self, table: str, row: sqlite3.Row, secret: str, now: float | None) -> None:
        """After a successful use: record last_used (at most once a minute) and rehash when the
        argon2 parameters changed, as for mailbox passwords."""
        now = time.time() if now is None else now
        updates: dict[str, object] = {}
        if row["last_used"] is None or now - row["last_used"] >= LAST_USED_GRANULARITY:
            updates["last_used"] = int(now)
        if self.hasher.check_needs_rehash(row["hash"]):
            updates["hash"] = self.hasher.hash(secret)
        if updates:
            sets = ", ".join(f"{column}=?" for column in updates)
            with self._write() as conn:
                conn.execute(f"UPDATE {table} SET {sets} WHERE id=?",
                             (*updates.values(), row["id"]))

    # --- TOTP ---

    def totp_begin(self, address: str) -> str:
        """A new TOTP secret to show (totp_uri) and confirm with totp_enable; not active yet."""
        self._existing_user(address)
        return pyotp.random_base32()

    def totp_uri(self, address: str, secret: str, issuer: str) -> str:
        """The otpauth:// URI for the authenticator app's QR code."""
        user = self._existing_user(address)
        return pyotp.TOTP(_check_totp_secret(secret)).provisioning_uri(
            name=user.address, issuer_name=issuer)

    def totp_enable(self, address: str, secret: str, code: str, *,
                    now: float | None = None) -> list[str]:
        """Turn TOTP on once ``code`` shows the authenticator has ``secret``; returns new recovery
        codes (shown only now). Replaces any earlier secret and recovery codes."""
        user = self._existing_user(address)
        secret = _check_totp_secret(secret)
        step = _totp_step(secret, code, now, after=-1)
        if step is None:
            raise AccountError("wrong code; check that the phone's clock is right and try again")
        codes, rows = self._new_recovery_codes()
        with self._write() as conn:
            # The confirming code is spent: it cannot be replayed for a login.
            conn.execute("UPDATE users SET totp_secret=?, totp_last_step=? WHERE id=?",
                         (secret, step, user.id))
            self._replace_recovery_codes(conn, user.id, rows)
        return codes

    def totp_disable(self, address: str) -> None:
        user = self._existing_user(address)
        with self._write() as conn:
            conn.execute("UPDATE users SET totp_secret=NULL WHERE id=?", (user.id,))
            conn.execute("DELETE FROM recovery_codes WHERE user_id=?", (user.id,))

    def totp_enabled(self, address: str) -> bool:
        return self._existing_user(address).totp

    def verify_second_factor(self, address: str, code: str, *, now: float | None = None) -> bool:
        """A current TOTP code not used before, or an unused recovery code (then spent)."""
        user = self.get_user(address)
        if user is None or user.disabled:
            return False
        conn = self._conn()
        row = conn.execute("SELECT totp_secret, totp_last_step FROM users WHERE id=?",
                           (user.id,)).fetchone()
        if row is None or row["totp_secret"] is None:
            return False
        if len(_compact(code)) == TOTP_DIGITS:
            step = _totp_step(row["totp_secret"], code, now, after=row["totp_last_step"])
            if step is None:
                return False
            with self._write() as conn:
                # RFC 6238 §5.2: never accept a code twice. The condition makes two logins racing
                # with the same code see one winner.
                cur = conn.execute(
                    "UPDATE users SET totp_last_step=? WHERE id=? AND totp_last_step<?",
                    (step, user.id, step))
            return cur.rowcount == 1
        return self._use_recovery_code(user.id, code)

    def recovery_codes_left(self, address: str) -> int:
        user = self._existing_user(address)
        row = self._conn().execute(
            "SELECT count(*) FROM recovery_codes WHERE user_id=? AND used=0", (user.id,)).fetchone()
        return row[0]

    def regenerate_recovery_codes(self, address: str) -> list[str]:
        """Fresh recovery codes (the old ones stop working); TOTP must be on."""
        user = self._existing_user(address)
        if not user.totp:
            raise AccountError(f"two-factor login is not on for {user.address}")
        codes, rows = self._new_recovery_codes()
        with self._write() as conn:
            self._replace_recovery_codes(conn, user.id, rows)
        return codes

    def _new_recovery_codes(self) -> tuple[list[str], list[tuple[str, str]]]:
        """(codes to show, (lookup, hash) rows); the lookup ids differ within the set."""
        codes: dict[str, str] = {}
        while len(codes) < RECOVERY_CODES:
            raw = _random(RECOVERY_CODE_LENGTH)
            codes.setdefault(raw[:GROUP], raw)
        rows = [(lookup, self.hasher.hash(raw[GROUP:])) for lookup, raw in codes.items()]
        return [_grouped(raw) for raw in codes.values()], rows

    @staticmethod
    def _replace_recovery_codes(conn: sqlite3.Connection, user_id: int,
                                rows: list[tuple[str, str]]) -> None:
        conn.execute("DELETE FROM recovery_codes WHERE user_id=?", (user_id,))
        conn.executemany("INSERT INTO recovery_codes (user_id, lookup, hash) VALUES (?, ?, ?)",
                         [(user_id, lookup, code_hash) for lookup, code_hash in rows])

    def _use_recovery_code(self, user_id: int, code: str) -> bool:
        parsed = _parse_grouped(code, RECOVERY_CODE_LENGTH)
        row = None
        if parsed is not None:
            row = self._conn().execute(
                "SELECT id, hash FROM recovery_codes WHERE user_id=? AND lookup=? AND used=0",
                (user_id, parsed[0])).fetchone()
        secret = parsed[1] if parsed is not None else code
        if not self._verify_row(row, secret):
            return False
        with self._write() as conn:
            # Conditional, like the TOTP step: of two logins racing with one code, one wins.
            cur = conn.execute("UPDATE recovery_codes SET used=1 WHERE id=? AND used=0",
                               (row["id"],))
        return cur.rowcount == 1


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _grouped(raw: str) -> str:
    return "-".join(raw[i:i + GROUP] for i in range(0, len(raw), GROUP))


def _compact(text: str) -> str:
    return "".join(text.split()).replace("-", "").lower()


def _parse_grouped(text: str, length: int) -> tuple[str, str] | None:
    """(lookup, secret) of a code as typed: any case, dashes and spaces optional, since phones
    capitalise the first letter and people drop or add separators."""
    raw = _compact(text)
    if len(raw) != length or not set(raw) <= set(ALPHABET):
        return None
    return raw[:GROUP], raw[GROUP:]


def _parse_token(token: str) -> tuple[str, str] | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    lookup, _, secret = token[len(TOKEN_PREFIX):].partition("_")
    if (len(lookup), len(secret)) != (TOKEN_LOOKUP_HEX, TOKEN_SECRET_HEX):
        return None
    if not set(lookup + secret) <= set("0123456789abcdef"):
        return None
    return lookup, secret


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise AccountError("a name is needed, e.g. the device it is for")
    if len(name) > MAX_NAME_LENGTH:
        raise AccountError(f"name too long: at most {MAX_NAME_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise AccountError("name must not contain control characters")
    return name


def _check_totp_secret(secret: str) -> str:
    """The secret in canonical base32 (upper case, no padding or spaces)."""
    canonical = "".join(secret.split()).upper().rstrip("=")
    try:
        key = base64.b32decode(canonical + "=" * (-len(canonical) % 8))
    except (binascii.Error, ValueError):
        raise AccountError("not a valid TOTP secret (base32 expected)") from None
    if len(key) < MIN_TOTP_SECRET_BYTES:
        raise AccountError(f"TOTP secret too short: at least {MIN_TOTP_SECRET_BYTES * 8} bits")
    return canonical


def _totp_step(secret: str, code: str, now: float | None, *, after: int) -> int | None:
    """The time step (RFC 6238 §4.2) within the allowed drift, later than ``after``, whose code
    is ``code``; None if there is none."""
    code = _compact(code)
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS)
    if len(code) != TOTP_DIGITS or not (code.isascii() and code.isdigit()):
        return None
    current = int((time.time() if now is None else now) // totp.interval)
    for step in range(current - TOTP_DRIFT_STEPS, current + TOTP_DRIFT_STEPS + 1):
        if step > after and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None
