"""server.accounts + server.credentials: schema v2 migration, app passwords, API tokens, TOTP and
recovery codes, on real SQLite with a real (cheap) argon2 hasher."""

from __future__ import annotations

import math
import re
import sqlite3
import time
from urllib.parse import parse_qs, urlparse

import argon2
import pyotp
import pytest

from server import credentials
from server.accounts import SCHEMA_VERSION, AccountError, AccountStore, AppPassword

PASSWORD = "correct horse battery"
# A fixed secret (160 bits) keeps the TOTP tests deterministic.
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
T = 1_700_000_010  # the first second of a 30 s step
CHAR = "[abcdefghijkmnpqrstuvwxyz2-9]"

# Version 1's schema as released: the migration test builds a database exactly as it was on disk.
SCHEMA_V1 = """
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
"""


class CountingHasher(argon2.PasswordHasher):
    """The real hasher, counting verifications: what the timing equaliser promises."""

    def __init__(self, time_cost: int = 1):
        super().__init__(time_cost=time_cost, memory_cost=1024, parallelism=1)
        self.verifies = 0

    def verify(self, hash, password):
        self.verifies += 1
        return super().verify(hash, password)


def _store(tmp_path, hasher=None) -> AccountStore:
    store = AccountStore(tmp_path / "db.sqlite3", tmp_path / "mail",
                         hasher=hasher or CountingHasher())
    store.initialise()
    return store


@pytest.fixture
def store(tmp_path):
    store = _store(tmp_path)
    store.add_domain("example.com")
    store.add_user("alice@example.com", PASSWORD)
    store.add_user("bob@example.com", PASSWORD)
    yield store
    store.close()


def _rows(store, table: str) -> int:
    return store._conn().execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _columns(conn, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


# --- schema ---


def _v1_database(tmp_path, extra_sql: str = "") -> None:
    hasher = CountingHasher()
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    conn.executescript(SCHEMA_V1 + extra_sql)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO domains VALUES ('example.com', 1600000000)")
    conn.execute("INSERT INTO users (local, domain, password, maildir, created)"
                 " VALUES ('alice', 'example.com', ?, 'example.com/alice', 1600000000)",
                 (hasher.hash(PASSWORD),))
    conn.commit()
    conn.close()


def test_new_database_is_current(tmp_path):
    store = _store(tmp_path)
    version = store._conn().execute("SELECT value FROM meta WHERE key='schema_version'")
    assert version.fetchone()[0] == str(SCHEMA_VERSION) == "2"


def test_migration_from_version_1(tmp_path):
    _v1_database(tmp_path)
    store = _store(tmp_path)
    conn = store._conn()
    assert conn.execute("SELECT value FROM meta").fetchone()[0] == "2"
    assert {"password_changed", "totp_secret", "totp_last_step"} <= set(_columns(conn, "users"))
    for table in ("app_passwords", "api_tokens", "recovery_codes"):
        assert _columns(conn, table)
    alice = store.authenticate("alice@example.com", PASSWORD)
    assert alice is not None
    assert alice.password_changed == 1600000000  # the best guess: when the mailbox was made
    assert not alice.totp
    _, app = store.add_app_password("alice@example.com", "phone")
    assert store.authenticate("alice@example.com", app) == alice
    store.initialise()  # and again: nothing to do
    assert store.authenticate("alice@example.com", app) == alice


def test_migration_is_one_transaction(tmp_path):
    # A table in the way makes the last step of the migration fail: nothing may be half-done.
    _v1_database(tmp_path, "CREATE TABLE recovery_codes (x);")
    store = AccountStore(tmp_path / "db.sqlite3", tmp_path / "mail", hasher=CountingHasher())
    with pytest.raises(sqlite3.OperationalError, match="recovery_codes already exists"):
        store.initialise()
    conn = store._conn()
    assert "password_changed" not in _columns(conn, "users")
    assert not _columns(conn, "app_passwords")
    assert conn.execute("SELECT value FROM meta").fetchone()[0] == "1"


def test_newer_database_refused(tmp_path):
    store = _store(tmp_path)
    store._conn().execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(AccountError, match="schema version 99, newer"):
        store.initialise()


def test_password_changed(store):
    before = time.time()
    carol = store.add_user("carol@example.com", PASSWORD)
    assert before <= carol.password_changed <= time.time()
    store.set_password("carol@example.com", "another good password")
    assert store.get_user("carol@example.com").password_changed > carol.password_changed


# --- app passwords ---


def test_app_password_format(store):
    ids = set()
    for _ in range(20):
        app_id, password = store.add_app_password("alice@example.com", "phone")
        assert re.fullmatch(rf"{CHAR}{{4}}(-{CHAR}{{4}}){{4}}", password), password
        ids.add(app_id)
    assert len(ids) == 20
    # The 16 symbols after the lookup id carry the secret.
    assert len(set(credentials.ALPHABET)) == 32
    assert 16 * math.log2(len(credentials.ALPHABET)) >= 80


def test_app_password_logs_in_and_lists(store):
    alice = store.get_user("alice@example.com")
    app_id, password = store.add_app_password("alice@example.com", "  Phone  ")
    assert store.authenticate("alice@example.com", password) == alice
    # as a phone may type it: capitalised, separators dropped or spaced
    assert store.authenticate("alice@example.com", password.capitalize()) == alice
    assert store.authenticate("alice@example.com", password.replace("-", "")) == alice
    assert store.authenticate("alice@example.com", password.replace("-", " - ")) == alice
    assert store.authenticate("alice@example.com", PASSWORD) == alice  # the password still works
    [listed] = store.list_app_passwords("ALICE@example.com")
    assert isinstance(listed, AppPassword)
    assert (listed.id, listed.name) == (app_id, "Phone")
    assert abs(listed.created - time.time()) < 5
    assert not hasattr(listed, "hash")
    assert store.list_app_passwords("bob@example.com") == []


def test_app_password_is_only_for_its_owner(store):
    _, password = store.add_app_password("alice@example.com", "phone")
    assert store.authenticate("bob@example.com", password) is None
    assert store.authenticate("nobody@example.com", password) is None


def test_app_password_not_for_the_panel(store):
    _, password = store.add_app_password("alice@example.com", "phone")
    assert store.authenticate("alice@example.com", password, app_passwords=False) is None
    assert store.authenticate("alice@example.com", PASSWORD, app_passwords=False) is not None


def test_app_password_wrong_secret_same_lookup(store):
    _, password = store.add_app_password("alice@example.com", "phone")
    last = "a" if password[-1] != "a" else "b"
    assert store.authenticate("alice@example.com", password[:-1] + last) is None


def test_revoke_app_password(store):
    first, p1 = store.add_app_password("alice@example.com", "phone")
    second, p2 = store.add_app_password("alice@example.com", "laptop")
    with pytest.raises(AccountError, match=f"no app password {first} for bob@example.com"):
        store.revoke_app_password("bob@example.com", first)
    with pytest.raises(AccountError, match="no app password 9999"):
        store.revoke_app_password("alice@example.com", 9999)
    store.revoke_app_password("alice@example.com", first)
    assert store.authenticate("alice@example.com", p1) is None
    assert store.authenticate("alice@example.com", p2) is not None
    assert [a.name for a in store.list_app_passwords("alice@example.com")] == ["laptop"]
    with pytest.raises(AccountError):
        store.revoke_app_password("alice@example.com", first)


def test_app_password_refused_when_disabled(store):
    _, password = store.add_app_password("alice@example.com", "phone")
    store.update_user("alice@example.com", disabled=True)
    assert store.authenticate("alice@example.com", password) is None


@pytest.mark.parametrize("name, message", [
    ("", "a name is needed"), ("   ", "a name is needed"), ("x" * 101, "name too long"),
    ("a\nb", "control characters"),
])
def test_bad_names_refused(store, name, message):
    with pytest.raises(AccountError, match=message):
        store.add_app_password("alice@example.com", name)
    with pytest.raises(AccountError, match=message):
        store.add_api_token("alice@example.com", name)


def test_unknown_mailbox_refused(store):
    for call in (store.add_app_password, store.add_api_token):
        with pytest.raises(AccountError, match="no mailbox"):
            call("nobody@example.com", "phone")
    with pytest.raises(AccountError, match="no mailbox"):
        store.list_app_passwords("nobody@example.com")


def test_app_password_last_used_at_most_once_a_minute(store):
    app_id, password = store.add_app_password("alice@example.com", "phone")

    def last_used():
        [app] = store.list_app_passwords("alice@example.com")
        return app.last_used

    assert last_used() is None
    store.authenticate("alice@example.com", password, now=T)
    assert last_used() == T
    store.authenticate("alice@example.com", password, now=T + 59)
    assert last_used() == T
    store.authenticate("alice@example.com", password, now=T + 60)
    assert last_used() == T + 60
    store.authenticate("alice@example.com", "wrong password", now=T + 500)
    assert last_used() == T + 60


def test_app_password_rehashed_when_parameters_change(tmp_path):
    old = _store(tmp_path, CountingHasher(time_cost=1))
    old.add_domain("example.com")
    old.add_user("alice@example.com", PASSWORD)
    _, password = old.add_app_password("alice@example.com", "phone")
    new = _store(tmp_path, CountingHasher(time_cost=2))
    assert new.authenticate("alice@example.com", password) is not None
    stored = new._conn().execute("SELECT hash FROM app_passwords").fetchone()[0]
    assert "t=2" in stored
    assert old.authenticate("alice@example.com", password) is not None


# --- the timing equaliser ---


def test_every_refused_login_costs_the_same_verifications(store):
    _, password = store.add_app_password("alice@example.com", "phone")
    store.add_user("dora@example.com", PASSWORD)
    _, dora_app = store.add_app_password("dora@example.com", "phone")
    store.update_user("dora@example.com", disabled=True)
    other = "a" if password[-1] != "a" else "b"
    refusals = {
        "wrong password": ("alice@example.com", "wrong password"),
        "unknown mailbox": ("nobody@example.com", PASSWORD),
        "not an address": ("not an address", PASSWORD),
        "app password, wrong secret": ("alice@example.com", password[:-1] + other),
        "app password, unknown lookup id": ("alice@example.com", "zzzz-zzzz-zzzz-zzzz-zzzz"),
        "app password, unknown mailbox": ("nobody@example.com", password),
        "someone else's app password": ("bob@example.com", password),
        "disabled, right password": ("dora@example.com", PASSWORD),
        "disabled, right app password": ("dora@example.com", dora_app),
    }
    hasher = store.hasher
    for what, (address, attempt) in refusals.items():
        for app_passwords, cost in ((True, 2), (False, 1)):
            hasher.verifies = 0
            assert store.authenticate(address, attempt, app_passwords=app_passwords) is None
            assert hasher.verifies == cost, (what, app_passwords)
    # Success is no secret to whoever gets it, so the password skips the app-password check.
    hasher.verifies = 0
    assert store.authenticate("alice@example.com", password) is not None
    assert hasher.verifies == 2
    hasher.verifies = 0
    assert store.authenticate("alice@example.com", PASSWORD) is not None
    assert hasher.verifies == 1


def test_token_and_recovery_checks_cost_one_verification(store):
    _, token = store.add_api_token("alice@example.com", "script")
    codes = store.totp_enable("alice@example.com", SECRET, pyotp.TOTP(SECRET).at(T), now=T)
    hasher = store.hasher
    for attempt in (token, token[:-1] + ("0" if token[-1] != "0" else "1"),
                    "mst_" + "0" * 16 + "_" + "0" * 40, "garbage"):
        hasher.verifies = 0
        store.authenticate_token(attempt)
        assert hasher.verifies == 1, attempt
    for attempt in (codes[0], codes[0], "zzzz-zzzz-zzzz", "not a code"):
        hasher.verifies = 0
        store.verify_second_factor("alice@example.com", attempt, now=T)
        assert hasher.verifies == 1, attempt


# --- API tokens ---


def test_api_token(store):
    alice = store.get_user("alice@example.com")
    token_id, token = store.add_api_token("alice@example.com", "backup script")
    assert re.fullmatch(r"mst_[0-9a-f]{16}_[0-9a-f]{40}", token)  # 160-bit secret
    assert store.authenticate_token(token) == alice
    assert store.authenticate_token(token.upper()) is None
    assert store.authenticate_token(token[:-1] + ("0" if token[-1] != "0" else "1")) is None
    assert store.authenticate_token("") is None
    # a token is not a password, nor an app password
    assert store.authenticate("alice@example.com", token) is None
    [listed] = store.list_api_tokens("alice@example.com")
    assert (listed.id, listed.name) == (token_id, "backup script")
    assert abs(listed.last_used - time.time()) < 5
    assert store.list_api_tokens("bob@example.com") == []
    assert store.list_app_passwords("alice@example.com") == []


def test_revoke_api_token(store):
    token_id, token = store.add_api_token("alice@example.com", "script")
    with pytest.raises(AccountError, match=f"no API token {token_id} for bob@example.com"):
        store.revoke_api_token("bob@example.com", token_id)
    assert store.authenticate_token(token) is not None
    store.revoke_api_token("alice@example.com", token_id)
    assert store.authenticate_token(token) is None
    with pytest.raises(AccountError, match="no API token"):
        store.revoke_api_token("alice@example.com", token_id)


def test_api_token_refused_when_disabled(store):
    _, token = store.add_api_token("alice@example.com", "script")
    store.update_user("alice@example.com", disabled=True)
    assert store.authenticate_token(token) is None


def test_api_token_last_used_at_most_once_a_minute(store):
    _, token = store.add_api_token("alice@example.com", "script")
    store.authenticate_token(token, now=T)
    store.authenticate_token(token, now=T + 30)
    assert store.list_api_tokens("alice@example.com")[0].last_used == T
    store.authenticate_token(token, now=T + 61)
    assert store.list_api_tokens("alice@example.com")[0].last_used == T + 61


# --- TOTP ---


def test_totp_begin_and_uri(store):
    secret = store.totp_begin("alice@example.com")
    assert len(credentials._check_totp_secret(secret)) == len(secret)
    assert len(secret) * 5 >= 160
    assert secret != store.totp_begin("alice@example.com")
    assert not store.totp_enabled("alice@example.com")  # not until the code is confirmed
    uri = urlparse(store.totp_uri("Alice@EXAMPLE.com", secret, "Mail at Example"))
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert uri.path == "/Mail%20at%20Example:alice%40example.com"
    query = parse_qs(uri.query)
    assert query["secret"] == [secret] and query["issuer"] == ["Mail at Example"]
    with pytest.raises(AccountError, match="no mailbox"):
        store.totp_begin("nobody@example.com")


@pytest.mark.parametrize("secret, message", [
    ("not base32!", "base32"), ("JBSWY3DPEHPK3PXP", "at least 128 bits"),
])
def test_bad_totp_secret_refused(store, secret, message):
    with pytest.raises(AccountError, match=message):
        store.totp_enable("alice@example.com", secret, "123456", now=T)


def test_totp_enable_needs_the_right_code(store):
    totp = pyotp.TOTP(SECRET)
    with pytest.raises(AccountError, match="wrong code"):
        store.totp_enable("alice@example.com", SECRET, totp.at(T + 300), now=T)
    assert not store.totp_enabled("alice@example.com")
    assert store.recovery_codes_left("alice@example.com") == 0
    codes = store.totp_enable("alice@example.com", SECRET, totp.at(T), now=T)
    assert store.totp_enabled("alice@example.com")
    assert store.get_user("alice@example.com").totp
    assert not store.get_user("bob@example.com").totp
    assert len(codes) == len(set(codes)) == 10
    for code in codes:
        assert re.fullmatch(rf"{CHAR}{{4}}-{CHAR}{{4}}-{CHAR}{{4}}", code), code
    assert store.recovery_codes_left("alice@example.com") == 10
    stored = [r[0] for r in store._conn().execute("SELECT hash FROM recovery_codes")]
    assert all(h.startswith("$argon2") for h in stored)


def test_totp_codes_with_drift_and_never_twice(store):
    totp = pyotp.TOTP(SECRET)
    store.totp_enable("alice@example.com", SECRET, totp.at(T), now=T)

    def check(at, now):
        return store.verify_second_factor("alice@example.com", totp.at(at), now=now)

    assert not check(T, T)  # spent confirming the set-up
    assert check(T + 30, T + 30)
    assert not check(T + 30, T + 35)  # replayed
    assert not check(T, T + 40)  # an older step than the last one used
    assert check(T + 270, T + 300)  # the phone is a step behind
    assert check(T + 330, T + 300)  # ...or ahead
    assert not check(T + 300, T + 300)  # before the last step used: never accepted
    assert not check(T + 660, T + 600)  # two steps ahead
    assert not check(T + 540, T + 600)  # two steps behind
    assert check(T + 600, T + 600)
    assert store.verify_second_factor("alice@example.com", " " + totp.at(T + 630)[:3] + " "
                                      + totp.at(T + 630)[3:], now=T + 630)


def test_recovery_codes_are_single_use(store):
    totp = pyotp.TOTP(SECRET)
    codes = store.totp_enable("alice@example.com", SECRET, totp.at(T), now=T)
    assert store.verify_second_factor("alice@example.com", codes[0], now=T)
    assert not store.verify_second_factor("alice@example.com", codes[0], now=T)
    assert store.recovery_codes_left("alice@example.com") == 9
    # typed loosely
    assert store.verify_second_factor("alice@example.com", codes[1].upper().replace("-", ""))
    assert store.recovery_codes_left("alice@example.com") == 8
    assert not store.verify_second_factor("alice@example.com", "zzzz-zzzz-zzzz")
    # one user's codes are not another's
    assert not store.verify_second_factor("bob@example.com", codes[2])
    bob_codes = store.totp_enable("bob@example.com", SECRET, totp.at(T), now=T)
    assert not store.verify_second_factor("bob@example.com", codes[2])
    assert store.verify_second_factor("bob@example.com", bob_codes[2])


def test_regenerate_recovery_codes(store):
    with pytest.raises(AccountError, match="not on"):
        store.regenerate_recovery_codes("alice@example.com")
    old = store.totp_enable("alice@example.com", SECRET, pyotp.TOTP(SECRET).at(T), now=T)
    store.verify_second_factor("alice@example.com", old[0])
    new = store.regenerate_recovery_codes("alice@example.com")
    assert store.recovery_codes_left("alice@example.com") == 10
    assert not store.verify_second_factor("alice@example.com", old[1])
    assert store.verify_second_factor("alice@example.com", new[1])


def test_totp_disable(store):
    totp = pyotp.TOTP(SECRET)
    codes = store.totp_enable("alice@example.com", SECRET, totp.at(T), now=T)
    store.totp_disable("alice@example.com")
    assert not store.totp_enabled("alice@example.com")
    assert store.recovery_codes_left("alice@example.com") == 0
    assert not store.verify_second_factor("alice@example.com", totp.at(T + 30), now=T + 30)
    assert not store.verify_second_factor("alice@example.com", codes[0])
    store.totp_disable("alice@example.com")  # already off: nothing to do
    # the password alone logs in again, as it always did over IMAP
    assert store.authenticate("alice@example.com", PASSWORD) is not None


def test_second_factor_refused_when_disabled_or_unknown(store):
    totp = pyotp.TOTP(SECRET)
    store.totp_enable("alice@example.com", SECRET, totp.at(T), now=T)
    store.update_user("alice@example.com", disabled=True)
    assert not store.verify_second_factor("alice@example.com", totp.at(T + 30), now=T + 30)
    assert not store.verify_second_factor("nobody@example.com", totp.at(T + 30), now=T + 30)


# --- deleting a mailbox ---


def test_delete_user_removes_its_credentials(store):
    for address in ("alice@example.com", "bob@example.com"):
        store.add_app_password(address, "phone")
        store.add_api_token(address, "script")
        store.totp_enable(address, SECRET, pyotp.TOTP(SECRET).at(T), now=T)
    assert [_rows(store, t) for t in ("app_passwords", "api_tokens", "recovery_codes")] == \
        [2, 2, 20]
    assert store._conn().execute("PRAGMA foreign_keys").fetchone()[0] == 1
    store.delete_user("alice@example.com", purge=True)
    assert [_rows(store, t) for t in ("app_passwords", "api_tokens", "recovery_codes")] == \
        [1, 1, 10]
    # a new mailbox of the same name starts with nothing
    store.add_user("alice@example.com", PASSWORD)
    assert store.list_app_passwords("alice@example.com") == []
    assert store.list_api_tokens("alice@example.com") == []
    assert not store.totp_enabled("alice@example.com")
