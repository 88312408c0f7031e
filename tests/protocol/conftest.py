"""Fixtures shared by protocol test modules (the instance-per-module ones are in tests/conftest)."""

from __future__ import annotations

import pytest

from tests.support import abuse


@pytest.fixture(scope="session")
def abuse_instance(tmp_path_factory, dns_server):
    """One instance with small [abuse] limits for every test_abuse_* module: each test attacks
    from its own loopback address and guesses at its own accounts, so they share it safely."""
    inst = abuse.start(tmp_path_factory.mktemp("abuse"), dns_server, *abuse.USERS)
    yield inst
    inst.stop()
