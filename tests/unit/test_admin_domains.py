"""Domains page: add (with its DKIM key), remove, and the errors a typo gets."""

from __future__ import annotations

import pytest

from server import dkimkeys
from tests.support.panel import ADMIN, Panel, flashes, text


@pytest.fixture
def panel(tmp_path, dns_server):
    panel = Panel.create(tmp_path, dns_server)
    panel.login(ADMIN)
    return panel


def add(panel, name):
    return panel.post("/domains/add", {"domain": name})


def test_add_domain_makes_its_dkim_key_and_shows_its_dns(panel):
    assert dkimkeys.keys_for(panel.inst.config.dkim_dir, "new.test") == []
    r = add(panel, "New.Test")
    assert r.status_code == 302 and r.headers["Location"] == "/dns/new.test"
    assert "new.test" in panel.accounts.list_domains()
    keys = dkimkeys.keys_for(panel.inst.config.dkim_dir, "new.test")
    assert [k.algorithm for k in keys] == ["rsa"]
    page = panel.follow(r)
    assert "Added new.test. Publish its DNS records next." in flashes(page)
    assert keys[0].record_name in text(page)
    listing = text(panel.get("/domains/"))
    assert "<td>new.test</td><td>0</td>" in listing


def test_add_international_domain(panel):
    r = add(panel, "bücher.test")
    assert r.headers["Location"] == "/dns/xn--bcher-kva.test"
    assert panel.follow(r).status_code == 200
    assert dkimkeys.keys_for(panel.inst.config.dkim_dir, "xn--bcher-kva.test")


@pytest.mark.parametrize("name, error", [
    ("bad..name", "invalid domain"),
    ("exa mple.test", "invalid domain"),
    ("<script>alert(1)</script>", "invalid domain"),
    ("evil.test\r\nX-Injected: 1", "must be one line"),
    ("evil\n.test", "must be one line"),
    ("", "Domain is required."),
    ("a" * 300 + ".test", "too long"),
    ("example.test", "already exists"),
])
def test_bad_domain_is_a_form_error(panel, name, error):
    before = panel.accounts.list_domains()
    r = add(panel, name)
    assert r.status_code == 303 and r.headers["Location"] == "/domains/"
    page = panel.follow(r)
    assert page.status_code == 200
    assert any(error in m for m in flashes(page)), flashes(page)
    assert panel.accounts.list_domains() == before
    assert "<script>alert" not in text(page)


def test_remove_domain(panel):
    panel.accounts.add_domain("spare.test")
    r = panel.post("/domains/spare.test/delete")
    assert "Removed spare.test." in flashes(panel.follow(r))
    assert "spare.test" not in panel.accounts.list_domains()


def test_domain_with_mailboxes_is_not_removed(panel):
    r = panel.post("/domains/example.test/delete")
    assert any("still has 2 mailbox(es)" in m for m in flashes(panel.follow(r)))
    assert "example.test" in panel.accounts.list_domains()


def test_removing_an_unknown_domain_is_a_form_error(panel):
    r = panel.post("/domains/nowhere.test/delete")
    assert any("no domain nowhere.test" in m for m in flashes(panel.follow(r)))
