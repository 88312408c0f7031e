"""server.accounts: domains, mailboxes, passwords, aliases and resolution, on real SQLite."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import argon2
import pytest

from maildir import DEFAULT_FOLDERS
from server.accounts import (
    AccountError,
    AccountStore,
    Alias,
    MailboxDisabled,
    NotLocal,
    UnknownRecipient,
)
from server.addresses import parse_address

PASSWORD = "correct horse battery"


def _hasher(time_cost: int = 1) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(time_cost=time_cost, memory_cost=1024, parallelism=1)


def _store(tmp_path, hasher=None) -> AccountStore:
    store = AccountStore(tmp_path / "db.sqlite3", tmp_path / "mail", hasher=hasher or _hasher())
    store.initialise()
    return store


@pytest.fixture
def store(tmp_path):
    store = _store(tmp_path)
    store.add_domain("example.com")
    yield store
    store.close()


def _resolve(store, address):
    res = store.resolve(parse_address(address))
    return sorted(u.address for u in res.mailboxes), list(res.external)


# --- domains ---


def test_domains(tmp_path):
    store = _store(tmp_path)
    assert store.add_domain("Example.COM.") == "example.com"
    assert store.add_domain("bücher.example") == "xn--bcher-kva.example"
    assert store.list_domains() == ["example.com", "xn--bcher-kva.example"]
    assert store.is_local_domain("example.com")
    assert not store.is_local_domain("other.example")
    store.delete_domain("EXAMPLE.com")
    assert store.list_domains() == ["xn--bcher-kva.example"]


def test_domain_added_twice_refused(store):
    with pytest.raises(AccountError, match="domain example.com already exists"):
        store.add_domain("EXAMPLE.COM")
    assert store.list_domains() == ["example.com"]


def test_bad_domain_refused(store):
    with pytest.raises(AccountError):
        store.add_domain("bad..example")
    with pytest.raises(AccountError, match="no domain other.example"):
        store.delete_domain("other.example")


def test_delete_domain_refused_while_it_has_users(store):
    store.add_user("alice@example.com", PASSWORD)
    with pytest.raises(AccountError, match="still has 1 mailbox"):
        store.delete_domain("example.com")
    assert store.list_domains() == ["example.com"]
    store.delete_user("alice@example.com", purge=True)
    store.delete_domain("example.com")
    assert store.list_domains() == []


def test_delete_domain_refused_while_it_has_aliases(store):
    store.add_alias("@example.com", ["someone@elsewhere.example"])
    with pytest.raises(AccountError, match="1 alias destination"):
        store.delete_domain("example.com")
    store.delete_alias("@example.com")
    store.delete_domain("example.com")
    assert store.list_domains() == []


def test_initialise_is_idempotent(store):
    store.add_user("alice@example.com", PASSWORD)
    store.initialise()
    assert [u.address for u in store.list_users()] == ["alice@example.com"]


# --- users ---


def test_add_user(store, tmp_path):
    user = store.add_user("Alice.Smith@EXAMPLE.com", PASSWORD, admin=True, quota_bytes=1000)
    assert user.address == "alice.smith@example.com"
    assert (user.local, user.domain) == ("alice.smith", "example.com")
    assert user.is_admin and not user.disabled
    assert user.quota_bytes == 1000
    assert user.maildir == tmp_path / "mail" / "example.com" / "alice.smith"
    assert store.get_user("ALICE.SMITH@example.com") == user
    assert store.list_users() == [user]
    assert store.list_users("example.com") == [user]


def test_add_user_creates_maildir_plus_plus(store):
    user = store.add_user("alice@example.com", PASSWORD)
    for sub in ("cur", "new", "tmp"):
        assert (user.maildir / sub).is_dir()
    assert [f".{f}" for f in DEFAULT_FOLDERS] == [".Sent", ".Drafts", ".Trash", ".Junk",
                                                   ".Archive"]
    for folder in (".Sent", ".Drafts", ".Trash", ".Junk", ".Archive"):
        for sub in ("cur", "new", "tmp"):
            assert (user.maildir / folder / sub).is_dir(), folder
        assert (user.maildir / folder / "maildirfolder").is_file()
    assert (user.maildir.stat().st_mode & 0o777) == 0o700


def test_duplicate_user_refused(store):
    store.add_user("alice@example.com", PASSWORD)
    with pytest.raises(AccountError, match="mailbox alice@example.com already exists"):
        store.add_user("ALICE@Example.com", PASSWORD)
    assert len(store.list_users()) == 1


def test_user_cannot_shadow_alias(store):
    store.add_alias("sales@example.com", ["someone@elsewhere.example"])
    with pytest.raises(AccountError, match="is an alias"):
        store.add_user("Sales@example.com", PASSWORD)
    assert store.list_users() == []
    assert not (store.mail_root / "example.com" / "sales").exists()


def test_alias_cannot_shadow_user(store):
    store.add_user("alice@example.com", PASSWORD)
    with pytest.raises(AccountError, match="is a mailbox"):
        store.add_alias("ALICE@example.com", ["someone@elsewhere.example"])
    assert store.list_aliases() == []


def test_user_needs_local_domain(store):
    with pytest.raises(AccountError, match="other.example is not a local domain"):
        store.add_user("alice@other.example", PASSWORD)


@pytest.mark.parametrize(
    "address",
    ["../x@example.com", "a/b@example.com", ".x@example.com", "x.@example.com",
     "a+b@example.com", '"a b"@example.com', "alice@[127.0.0.1]", "alice", "-a@example.com"],
)
def test_bad_mailbox_names_refused(store, address):
    with pytest.raises(AccountError):
        store.add_user(address, PASSWORD)
    assert store.list_users() == []
    assert sorted(p.name for p in store.mail_root.rglob("*")) in ([], ["example.com"])


@pytest.mark.parametrize("password", ["short", "x" * 9, "tab\tinside password", ""])
def test_bad_password_refused(store, password):
    with pytest.raises(AccountError, match="password"):
        store.add_user("alice@example.com", password)
    assert store.get_user("alice@example.com") is None
    assert not (store.mail_root / "example.com" / "alice").exists()


def test_min_password_length_configurable(tmp_path):
    store = AccountStore(tmp_path / "db", tmp_path / "mail", hasher=_hasher(),
                         min_password_length=4)
    store.initialise()
    store.add_domain("example.com")
    assert store.add_user("alice@example.com", "four").address == "alice@example.com"


def test_update_user(store):
    store.add_user("alice@example.com", PASSWORD)
    user = store.update_user("Alice@example.com", admin=True, quota_bytes=2048, disabled=True)
    assert (user.is_admin, user.quota_bytes, user.disabled) == (True, 2048, True)
    user = store.update_user("alice@example.com", disabled=False)
    assert (user.is_admin, user.quota_bytes, user.disabled) == (True, 2048, False)
    with pytest.raises(AccountError, match="no mailbox bob@example.com"):
        store.update_user("bob@example.com", admin=True)


# --- authentication ---


def test_authenticate(store):
    alice = store.add_user("alice@example.com", PASSWORD)
    assert store.authenticate("alice@example.com", PASSWORD) == alice
    assert store.authenticate("Alice@EXAMPLE.COM", PASSWORD) == alice
    assert store.authenticate("alice@example.com", PASSWORD + "x") is None
    assert store.authenticate("alice@example.com", "") is None
    assert store.authenticate("bob@example.com", PASSWORD) is None
    assert store.authenticate("not an address", PASSWORD) is None


def test_authenticate_disabled(store):
    store.add_user("alice@example.com", PASSWORD)
    store.update_user("alice@example.com", disabled=True)
    assert store.authenticate("alice@example.com", PASSWORD) is None


def test_set_password(store):
    store.add_user("alice@example.com", PASSWORD)
    store.set_password("alice@example.com", "another good password")
    assert store.authenticate("alice@example.com", PASSWORD) is None
    assert store.authenticate("alice@example.com", "another good password") is not None
    with pytest.raises(AccountError, match="password too short"):
        store.set_password("alice@example.com", "short")
    with pytest.raises(AccountError, match="no mailbox"):
        store.set_password("bob@example.com", PASSWORD)


def _stored_hash(store, address):
    row = store._conn().execute(
        "SELECT password FROM users WHERE local || '@' || domain = ?", (address,)).fetchone()
    return row[0]


def test_rehash_on_login_when_parameters_change(tmp_path):
    old = _store(tmp_path, _hasher(time_cost=1))
    old.add_domain("example.com")
    old.add_user("alice@example.com", PASSWORD)
    old_hash = _stored_hash(old, "alice@example.com")
    assert "t=1" in old_hash

    new_hasher = _hasher(time_cost=2)
    new = _store(tmp_path, new_hasher)
    assert new_hasher.check_needs_rehash(old_hash)
    # a wrong password must not rehash
    assert new.authenticate("alice@example.com", "wrong password!") is None
    assert _stored_hash(new, "alice@example.com") == old_hash

    assert new.authenticate("alice@example.com", PASSWORD) is not None
    new_hash = _stored_hash(new, "alice@example.com")
    assert new_hash != old_hash
    assert "t=2" in new_hash
    assert not new_hasher.check_needs_rehash(new_hash)
    assert new_hasher.verify(new_hash, PASSWORD)
    assert new.authenticate("alice@example.com", PASSWORD) is not None
    assert _stored_hash(new, "alice@example.com") == new_hash  # no rehash the second time
    # the old store's hasher still verifies it: parameters travel in the hash
    assert old.authenticate("alice@example.com", PASSWORD) is not None


# --- aliases ---


def test_add_and_list_aliases(store):
    store.add_user("alice@example.com", PASSWORD)
    alias = store.add_alias("Team@example.com", ["ALICE@example.com", "Bob@Elsewhere.EXAMPLE"])
    assert alias == Alias("team@example.com", ("alice@example.com", "Bob@elsewhere.example"))
    store.add_alias("@example.com", ["alice@example.com"])
    assert store.list_aliases() == [
        Alias("@example.com", ("alice@example.com",)),
        alias,
    ]
    # adding a destination twice keeps one
    assert store.add_alias("team@example.com", ["alice@example.com"]).destinations == (
        "alice@example.com", "Bob@elsewhere.example")


@pytest.mark.parametrize(
    ("source", "dests", "message"),
    [
        ("team@example.com", [], "at least one destination"),
        ("team@example.com", ["not-an-address"], "invalid destination"),
        ("team@example.com", ["a@[127.0.0.1]"], "address literals"),
        ("team@other.example", ["a@example.com"], "not a local domain"),
        ("@other.example", ["a@example.com"], "not a local domain"),
        ("a+b@example.com", ["a@example.com"], "invalid mailbox name"),
    ],
)
def test_bad_alias_refused(store, source, dests, message):
    with pytest.raises(AccountError, match=message):
        store.add_alias(source, dests)
    assert store.list_aliases() == []


def test_delete_alias(store):
    store.add_alias("team@example.com", ["a@elsewhere.example", "b@elsewhere.example"])
    store.delete_alias("team@example.com", "a@elsewhere.example")
    assert store.list_aliases() == [Alias("team@example.com", ("b@elsewhere.example",))]
    store.delete_alias("TEAM@example.com")
    assert store.list_aliases() == []
    with pytest.raises(AccountError, match="no such alias team@example.com"):
        store.delete_alias("team@example.com")


def test_delete_alias_destination_as_it_was_added(store):
    # The destination is normalised when stored (domain lower-cased / IDNA), so the same text
    # the alias was added with must find it again.
    store.add_alias("team@example.com", ["Friend@Elsewhere.Example", "x@bücher.example"])
    store.delete_alias("team@example.com", "Friend@Elsewhere.Example")
    store.delete_alias("team@example.com", "x@bücher.example")
    assert store.list_aliases() == []


# --- resolution ---


@pytest.fixture
def people(store):
    store.add_user("alice@example.com", PASSWORD)
    store.add_user("bob@example.com", PASSWORD)
    return store


def test_resolve_user(people):
    assert _resolve(people, "alice@example.com") == (["alice@example.com"], [])
    assert _resolve(people, "ALICE@Example.COM") == (["alice@example.com"], [])


def test_resolve_plus_tag(people):
    assert _resolve(people, "alice+lists@example.com") == (["alice@example.com"], [])
    assert _resolve(people, "Alice+Lists+x@example.com") == (["alice@example.com"], [])
    with pytest.raises(UnknownRecipient):
        _resolve(people, "carol+lists@example.com")


def test_resolve_plus_tag_off(tmp_path):
    store = AccountStore(tmp_path / "db", tmp_path / "mail", hasher=_hasher(),
                         recipient_delimiter="")
    store.initialise()
    store.add_domain("example.com")
    store.add_user("alice@example.com", PASSWORD)
    with pytest.raises(UnknownRecipient):
        _resolve(store, "alice+lists@example.com")


def test_resolve_alias_two_destinations(people):
    people.add_alias("team@example.com", ["alice@example.com", "bob@example.com"])
    assert _resolve(people, "team@example.com") == (
        ["alice@example.com", "bob@example.com"], [])
    assert _resolve(people, "team+x@example.com") == (
        ["alice@example.com", "bob@example.com"], [])


def test_resolve_alias_chain(people):
    people.add_alias("a1@example.com", ["a2@example.com"])
    people.add_alias("a2@example.com", ["a3@example.com"])
    people.add_alias("a3@example.com", ["bob+chain@example.com"])
    assert _resolve(people, "a1@example.com") == (["bob@example.com"], [])


def test_resolve_alias_loop_terminates(people):
    people.add_alias("x@example.com", ["y@example.com", "alice@example.com"])
    people.add_alias("y@example.com", ["x@example.com", "bob@example.com"])
    assert _resolve(people, "x@example.com") == (["alice@example.com", "bob@example.com"], [])
    assert _resolve(people, "y@example.com") == (["alice@example.com", "bob@example.com"], [])


def test_resolve_alias_loop_without_members(store):
    store.add_alias("x@example.com", ["y@example.com"])
    store.add_alias("y@example.com", ["x@example.com"])
    with pytest.raises(UnknownRecipient):
        _resolve(store, "x@example.com")


def test_resolve_same_mailbox_twice_is_one_delivery(people):
    people.add_alias("team@example.com", ["alice@example.com", "alice+copy@example.com"])
    res = people.resolve(parse_address("team@example.com"))
    assert [u.address for u in res.mailboxes] == ["alice@example.com"]


def test_resolve_catch_all(people):
    people.add_alias("@example.com", ["bob@example.com"])
    assert _resolve(people, "anything@example.com") == (["bob@example.com"], [])
    assert _resolve(people, "alice@example.com") == (["alice@example.com"], [])


def test_exact_alias_wins_over_catch_all(people):
    people.add_alias("@example.com", ["bob@example.com"])
    people.add_alias("sales@example.com", ["alice@example.com"])
    assert _resolve(people, "sales@example.com") == (["alice@example.com"], [])
    assert _resolve(people, "sales+q3@example.com") == (["alice@example.com"], [])


def test_resolve_external_destinations(people):
    people.add_alias("fwd@example.com", ["Friend@Elsewhere.example", "alice@example.com"])
    assert _resolve(people, "fwd@example.com") == (["alice@example.com"],
                                                   ["Friend@elsewhere.example"])


def test_resolve_external_only(store):
    store.add_alias("fwd@example.com", ["friend@elsewhere.example"])
    res = store.resolve(parse_address("fwd@example.com"))
    assert res.mailboxes == ()
    assert res.external == ("friend@elsewhere.example",)


def test_disabled_user_direct(people):
    people.update_user("alice@example.com", disabled=True)
    with pytest.raises(MailboxDisabled):
        _resolve(people, "alice@example.com")
    with pytest.raises(MailboxDisabled):
        _resolve(people, "alice+tag@example.com")


def test_disabled_user_via_alias_skipped(people):
    people.add_alias("team@example.com", ["alice@example.com", "bob@example.com"])
    people.add_alias("solo@example.com", ["alice@example.com"])
    people.update_user("alice@example.com", disabled=True)
    assert _resolve(people, "team@example.com") == (["bob@example.com"], [])
    with pytest.raises(UnknownRecipient):
        _resolve(people, "solo@example.com")


def test_role_addresses_reach_admins(people):
    people.add_user("carol@example.com", PASSWORD, admin=True)
    people.add_user("dave@example.com", PASSWORD, admin=True)
    people.update_user("dave@example.com", disabled=True)
    for role in ("postmaster", "Postmaster", "abuse", "postmaster+x"):
        assert _resolve(people, f"{role}@example.com") == (["carol@example.com"], []), role
    with pytest.raises(UnknownRecipient):
        _resolve(people, "hostmaster@example.com")


def test_role_address_alias_wins_over_admins(people):
    people.add_user("carol@example.com", PASSWORD, admin=True)
    people.add_alias("postmaster@example.com", ["bob@example.com"])
    assert _resolve(people, "postmaster@example.com") == (["bob@example.com"], [])
    assert _resolve(people, "abuse@example.com") == (["carol@example.com"], [])


def test_admins_win_over_catch_all_for_role_addresses(people):
    # RFC 5321 §4.5.1: postmaster must reach whoever runs the server, even when the catch-all
    # sends the rest of the domain elsewhere.
    people.add_user("carol@example.com", PASSWORD, admin=True)
    people.add_alias("@example.com", ["bob@example.com"])
    assert _resolve(people, "postmaster@example.com") == (["carol@example.com"], [])
    assert _resolve(people, "anyone@example.com") == (["bob@example.com"], [])


def test_catch_all_takes_role_addresses_without_admins(people):
    people.add_alias("@example.com", ["bob@example.com"])
    assert _resolve(people, "postmaster@example.com") == (["bob@example.com"], [])


def test_role_address_without_admins(people):
    with pytest.raises(UnknownRecipient):
        _resolve(people, "postmaster@example.com")


def test_unknown_recipient(people):
    with pytest.raises(UnknownRecipient):
        _resolve(people, "nobody@example.com")


@pytest.mark.parametrize("address", ["alice@other.example", "alice@[127.0.0.1]",
                                     "alice@sub.example.com"])
def test_not_local(people, address):
    with pytest.raises(NotLocal):
        _resolve(people, address)


# --- deleting users ---


def test_delete_user_moves_maildir_aside(people, tmp_path):
    alice = people.get_user("alice@example.com")
    (alice.maildir / "new" / "1.msg").write_bytes(b"Subject: keep me\r\n\r\n")
    moved = people.delete_user("Alice@example.com")
    assert moved is not None
    assert moved.parent == tmp_path / "deleted" / "example.com"
    assert moved.name.startswith("alice.")
    assert (moved / "new" / "1.msg").read_bytes() == b"Subject: keep me\r\n\r\n"
    assert not alice.maildir.exists()
    assert people.get_user("alice@example.com") is None
    assert people.authenticate("alice@example.com", PASSWORD) is None
    with pytest.raises(UnknownRecipient):
        _resolve(people, "alice@example.com")
    # a new mailbox of the same name starts empty
    again = people.add_user("alice@example.com", PASSWORD)
    assert list((again.maildir / "new").iterdir()) == []


def test_delete_user_purge(people, tmp_path):
    alice = people.get_user("alice@example.com")
    assert people.delete_user("alice@example.com", purge=True) is None
    assert not alice.maildir.exists()
    assert not (tmp_path / "deleted").exists()
    assert [u.address for u in people.list_users()] == ["bob@example.com"]


def test_delete_user_twice_in_one_second(people, tmp_path, monkeypatch):
    # Delete, re-create and delete again within a second (an admin fixing a typo, a script):
    # each deletion keeps its own copy of the mail, and the second must not fail half-way.
    monkeypatch.setattr("server.accounts.time", SimpleNamespace(time=lambda: 1_700_000_000.5))
    first = people.delete_user("alice@example.com")
    people.add_user("alice@example.com", PASSWORD)
    second = people.delete_user("alice@example.com")
    assert first is not None and second is not None and first != second
    assert first.is_dir() and second.is_dir()
    assert not (tmp_path / "mail" / "example.com" / "alice").exists()


def test_delete_unknown_user(people):
    with pytest.raises(AccountError, match="no mailbox carol@example.com"):
        people.delete_user("carol@example.com")


# --- threads ---


def test_two_threads_share_one_store(store):
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(prefix: str) -> None:
        try:
            barrier.wait()
            for i in range(8):
                store.add_user(f"{prefix}{i}@example.com", PASSWORD)
                assert store.authenticate(f"{prefix}{i}@example.com", PASSWORD) is not None
                res = store.resolve(parse_address(f"{prefix}{i}+t@example.com"))
                assert [u.address for u in res.mailboxes] == [f"{prefix}{i}@example.com"]
                store.add_alias(f"{prefix}-team@example.com", [f"{prefix}{i}@example.com"])
        except BaseException as err:  # reported below, from the main thread
            errors.append(err)
        finally:
            store.close()

    threads = [threading.Thread(target=work, args=(p,)) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert len(store.list_users()) == 16
    for prefix in ("a", "b"):
        assert len(_resolve(store, f"{prefix}-team@example.com")[0]) == 8


def test_alias_chain_too_deep_is_a_typed_error(store):
    from server.accounts import MAX_ALIAS_DEPTH, AliasLoop

    for i in range(MAX_ALIAS_DEPTH + 1):
        store.add_alias(f"hop{i}@example.com", [f"hop{i + 1}@example.com"])
    with pytest.raises(AliasLoop):
        store.resolve(parse_address("hop0@example.com"))


def test_database_is_in_wal_mode_and_private(store):
    import sqlite3

    mode = sqlite3.connect(store.db_path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert store.db_path.stat().st_mode & 0o777 == 0o600


def test_a_recipient_is_resolved_from_memory_until_a_commit(store, tmp_path):
    """Every RCPT resolves its address: the domain and mailbox rows are read from SQLite once
    and again only after a commit, from this store or any other process's."""
    store.add_user("ann@example.com", "correct horse battery")
    statements = []
    store._conn().set_trace_callback(statements.append)
    addr = parse_address("ann@example.com")
    first = store.resolve(addr).mailboxes
    asked = len(statements)
    assert asked >= 1  # the mailbox row (the domain may be known already)
    assert store.resolve(addr).mailboxes == first and len(statements) == asked
    other = _store(tmp_path)  # another connection, as the panel or the CLI would be
    other.update_user("ann@example.com", disabled=True)
    other.close()
    with pytest.raises(MailboxDisabled):
        store.resolve(addr)
    assert len(statements) > asked
