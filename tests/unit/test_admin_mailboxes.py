"""Mailboxes page: create, reset the password, quota/disable/admin, delete, and the admin's
protection against locking themselves out."""

from __future__ import annotations

import re

import pytest

from tests.support.instance import PASSWORD
from tests.support.panel import ADMIN, USER, Panel, flashes, text

NEW_PASSWORD = "a brand new password"


@pytest.fixture
def panel(tmp_path, dns_server):
    panel = Panel.create(tmp_path, dns_server)
    panel.login(ADMIN)
    return panel


def create(panel, local="carol", password=NEW_PASSWORD, password2=None, **extra):
    form = {"local": local, "domain": "example.test", "password": password,
            "password2": password if password2 is None else password2, **extra}
    return panel.post("/mailboxes/add", form)


def errors_after(panel, r) -> list[str]:
    assert r.status_code in (302, 303), r.status_code
    page = panel.follow(r)
    assert page.status_code == 200
    return flashes(page)


def test_create_mailbox(panel):
    r = create(panel, "Carol", quota="2G", admin="1")
    assert "Created carol@example.test." in errors_after(panel, r)
    user = panel.accounts.authenticate("carol@example.test", NEW_PASSWORD)
    assert user is not None and user.is_admin and user.quota_bytes == 2 * 1024**3
    assert (panel.inst.data_dir / "mail" / "example.test" / "carol" / "cur").is_dir()
    page = text(panel.get("/mailboxes/"))
    assert "carol@example.test" in page and "of 2 GB" in page


def test_create_plain_mailbox(panel):
    create(panel, "dave")
    user = panel.accounts.get_user("dave@example.test")
    assert not user.is_admin and user.quota_bytes == 0 and not user.disabled


@pytest.mark.parametrize("kwargs, error", [
    ({"password": "short"}, "password too short"),
    ({"password2": "something else"}, "The two passwords differ."),
    ({"local": "user"}, "already exists"),
    ({"local": "a b"}, "invalid local part"),
    ({"local": "<script>"}, "invalid local part"),
    ({"local": "x\r\nBcc: victim@remote.test"}, "must be one line"),
    ({"local": ""}, "Local is required."),
    ({"quota": "lots"}, "Quota must be a size"),
    ({"quota": "-1G"}, "Quota must be a size"),
])
def test_create_mailbox_errors(panel, kwargs, error):
    before = panel.accounts.list_users()
    messages = errors_after(panel, create(panel, **kwargs))
    assert any(error in m for m in messages), messages
    assert panel.accounts.list_users() == before


def test_create_in_unknown_domain(panel):
    r = panel.post("/mailboxes/add", {"local": "x", "domain": "nowhere.test",
                                      "password": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert any("not a local domain" in m for m in errors_after(panel, r))


def test_reset_password(panel):
    r = panel.post(f"/mailboxes/{USER}/password", {"password": NEW_PASSWORD})
    assert any("New password set" in m for m in errors_after(panel, r))
    assert panel.accounts.authenticate(USER, NEW_PASSWORD) is not None
    assert panel.accounts.authenticate(USER, PASSWORD) is None
    for password, error in (("", "Type the new password."), ("short", "too short")):
        r = panel.post(f"/mailboxes/{USER}/password", {"password": password})
        assert any(error in m for m in errors_after(panel, r))
    assert panel.accounts.authenticate(USER, NEW_PASSWORD) is not None


def test_reset_password_ends_the_users_sessions(panel):
    user = panel.another()
    user.login(USER)
    panel.post(f"/mailboxes/{USER}/password", {"password": NEW_PASSWORD})
    assert user.get("/account/").status_code == 302


def test_settings_quota_disable_admin(panel):
    r = panel.post(f"/mailboxes/{USER}/settings", {"quota": "500M", "admin": "1"})
    assert f"Saved {USER}." in errors_after(panel, r)
    user = panel.accounts.get_user(USER)
    assert user.quota_bytes == 500 * 1024**2 and user.is_admin and not user.disabled
    panel.post(f"/mailboxes/{USER}/settings", {"quota": "0", "disabled": "1"})
    user = panel.accounts.get_user(USER)
    assert user.quota_bytes == 0 and not user.is_admin and user.disabled
    page = text(panel.get("/mailboxes/"))
    assert 'class="disabled"' in page and "badge bad\">disabled" in page
    assert panel.accounts.authenticate(USER, PASSWORD) is None
    panel.post(f"/mailboxes/{USER}/settings", {"quota": ""})
    assert not panel.accounts.get_user(USER).disabled


def test_settings_errors(panel):
    r = panel.post(f"/mailboxes/{USER}/settings", {"quota": "2X"})
    assert any("Quota must be a size" in m for m in errors_after(panel, r))
    r = panel.post("/mailboxes/nobody@example.test/settings", {"quota": "1G"})
    assert any("no mailbox" in m for m in errors_after(panel, r))


# The admin's own address however it is spelt in the URL.
SELF = [ADMIN, "ADMIN@Example.Test", "admin@example.test.", '"admin"@example.test']


@pytest.mark.parametrize("me", SELF)
def test_cannot_demote_or_disable_yourself(panel, me):
    for form in ({"quota": "0"}, {"quota": "0", "admin": "1", "disabled": "1"}):
        r = panel.post(f"/mailboxes/{me}/settings", form)
        assert any("cannot remove your own admin rights" in m for m in errors_after(panel, r))
    user = panel.accounts.get_user(ADMIN)
    assert user.is_admin and not user.disabled
    # Changing one's own quota is fine.
    panel.post(f"/mailboxes/{me}/settings", {"quota": "1G", "admin": "1"})
    assert panel.accounts.get_user(ADMIN).quota_bytes == 1024**3


@pytest.mark.parametrize("me", SELF)
def test_cannot_delete_yourself(panel, me):
    r = panel.post(f"/mailboxes/{me}/delete")
    assert any("cannot delete your own mailbox" in m for m in errors_after(panel, r))
    assert panel.accounts.get_user(ADMIN) is not None
    assert panel.get("/mailboxes/").status_code == 200


def test_delete_mailbox_keeps_its_mail_aside(panel):
    r = panel.post(f"/mailboxes/{USER}/delete")
    messages = errors_after(panel, r)
    assert any(m.startswith(f"Deleted {USER}; its mail was kept in ") for m in messages)
    assert panel.accounts.get_user(USER) is None
    assert not (panel.inst.data_dir / "mail" / "example.test" / "user").exists()
    assert list((panel.inst.data_dir / "deleted" / "example.test").iterdir())
    r = panel.post(f"/mailboxes/{USER}/delete")
    assert any("no mailbox" in m for m in errors_after(panel, r))


@pytest.mark.parametrize("quota", [0, 1500 * 1024**2, 1234567, 3 * 1024**4, 1024])
def test_saving_the_settings_form_unchanged_keeps_the_quota(panel, quota):
    panel.accounts.update_user(USER, quota_bytes=quota)
    page = text(panel.get("/mailboxes/"))
    form = re.search(rf'action="/mailboxes/{re.escape(USER)}/settings".*?</form>', page, re.S)
    shown = re.search(r'name="quota" value="([^"]*)"', form.group(0)).group(1)
    panel.post(f"/mailboxes/{USER}/settings", {"quota": shown})
    assert panel.accounts.get_user(USER).quota_bytes == quota, shown
