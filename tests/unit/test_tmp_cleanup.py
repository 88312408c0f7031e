"""The server's sweep of what crashed writers leave in Maildir tmp/ directories."""

from __future__ import annotations

import os
import time

import argon2

from server.accounts import AccountStore
from server.runner import clean_all_tmp


def test_stale_tmp_files_are_removed_in_every_folder(tmp_path):
    store = AccountStore(tmp_path / "db.sqlite3", tmp_path / "mail",
                         hasher=argon2.PasswordHasher(time_cost=1, memory_cost=1024,
                                                      parallelism=1))
    store.initialise()
    store.add_domain("example.test")
    user = store.add_user("ann@example.test", "a long password")
    old = time.time() - 40 * 3600
    stale = [user.maildir / "tmp" / "crashed.1", user.maildir / ".Sent" / "tmp" / "crashed.2"]
    for path in stale:
        path.write_bytes(b"partial")
        os.utime(path, (old, old))
    fresh = user.maildir / "tmp" / "being-written"
    fresh.write_bytes(b"in progress")
    assert clean_all_tmp(store) == 2
    assert not any(p.exists() for p in stale)
    assert fresh.exists()
