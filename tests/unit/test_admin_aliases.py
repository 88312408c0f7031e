"""Aliases page: aliases to mailboxes and outside addresses, catch-alls, removal, errors."""

from __future__ import annotations

import pytest

from server.addresses import parse_address
from tests.support.panel import ADMIN, USER, Panel, flashes, text


@pytest.fixture
def panel(tmp_path, dns_server):
    panel = Panel.create(tmp_path, dns_server)
    panel.login(ADMIN)
    return panel


def add(panel, local, destinations, domain="example.test"):
    r = panel.post("/aliases/add", {"local": local, "domain": domain,
                                    "destinations": destinations})
    assert r.status_code in (302, 303), r.status_code
    page = panel.follow(r)
    assert page.status_code == 200
    return flashes(page)


def aliases(panel) -> dict:
    return {a.source: a.destinations for a in panel.accounts.list_aliases()}


def delivers_to(panel, address):
    res = panel.accounts.resolve(parse_address(address))
    return sorted([u.address for u in res.mailboxes] + list(res.external))


def test_alias_to_a_mailbox_and_outside(panel):
    messages = add(panel, "Sales", f"{USER}, friend@elsewhere.test;  {ADMIN}")
    assert messages == [f"sales@example.test now goes to {USER}, friend@elsewhere.test, "
                        f"{ADMIN}."]
    assert delivers_to(panel, "sales@example.test") == [ADMIN, "friend@elsewhere.test", USER]
    page = text(panel.get("/aliases/"))
    assert "sales@example.test" in page and "friend@elsewhere.test" in page


@pytest.mark.parametrize("local", ["", "*", "  "])
def test_catch_all(panel, local):
    add(panel, local, USER)
    assert aliases(panel) == {"@example.test": (USER,)}
    assert delivers_to(panel, "anything@example.test") == [USER]
    page = text(panel.get("/aliases/"))
    assert "everything@example.test" in page and "catch-all" in page


def test_remove_one_destination_then_the_alias(panel):
    add(panel, "team", f"{USER}, {ADMIN}")
    r = panel.post("/aliases/delete", {"source": "team@example.test", "destination": USER})
    assert f"Removed team@example.test → {USER}." in flashes(panel.follow(r))
    assert aliases(panel) == {"team@example.test": (ADMIN,)}
    r = panel.post("/aliases/delete", {"source": "team@example.test"})
    assert "Removed team@example.test." in flashes(panel.follow(r))
    assert aliases(panel) == {}


def test_remove_catch_all(panel):
    add(panel, "", USER)
    panel.post("/aliases/delete", {"source": "@example.test", "destination": USER})
    assert aliases(panel) == {}


@pytest.mark.parametrize("local, destinations, domain, error", [
    ("x", "", "example.test", "Destinations is required."),
    ("x", " , ;", "example.test", "at least one destination"),
    ("user", ADMIN, "example.test", "is a mailbox"),
    ("x", "not-an-address", "example.test", "invalid destination"),
    ("x", USER, "nowhere.test", "not a local domain"),
    ("x", USER, "", "Domain is required."),
    ("x\r\nBcc: victim@remote.test", USER, "example.test", "must be one line"),
    ("x", f"{USER}\r\nBcc: victim@remote.test", "example.test", "must be one line"),
    ("x", USER, "example\r\n.test", "must be one line"),
    ("<script>", USER, "example.test", "invalid local part"),
])
def test_alias_errors(panel, local, destinations, domain, error):
    messages = add(panel, local, destinations, domain)
    assert any(error in m for m in messages), messages
    assert aliases(panel) == {}


def test_removing_an_unknown_alias_is_a_form_error(panel):
    r = panel.post("/aliases/delete", {"source": "nothing@example.test"})
    assert any("no such alias" in m for m in flashes(panel.follow(r)))


def test_names_are_escaped(panel):
    evil = '"<script>alert(1)</script>"@elsewhere.test'
    add(panel, "fwd", evil)
    assert aliases(panel) == {"fwd@example.test": (evil,)}
    for path in ("/aliases/", "/"):
        page = text(panel.get(path))
        assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text(panel.get("/aliases/"))
