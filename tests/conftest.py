"""Shared fixtures: the loopback DNS server and running mailstead instances."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.instance import Instance

IN_CI = bool(os.environ.get("CI"))


def require_tool(name: str) -> str:
    """The tool's path; a missing tool fails in CI (make test installs it) and skips elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    if IN_CI:
        pytest.fail(f"{name} is not installed; 'make test' installs it when run as root")
    pytest.skip(f"{name} not installed (run 'make test' as root to install it)")


@pytest.fixture(scope="session")
def dns_server():
    with DNSTestServer(DEFAULT_ZONE) as server:
        yield server
    assert not server.errors, server.errors


@pytest.fixture(scope="module")
def mx(tmp_path_factory, dns_server):
    """One running instance shared by a test module; tests use their own addresses."""
    inst = Instance(tmp_path_factory.mktemp("mx"), dns_server.nameserver)
    inst.start()
    yield inst
    inst.stop()


@pytest.fixture
def fresh(tmp_path, dns_server):
    """An instance of the test's own (not started: call ``start()`` after configuring)."""
    inst = Instance(tmp_path, dns_server.nameserver)
    yield inst
    inst.stop()
