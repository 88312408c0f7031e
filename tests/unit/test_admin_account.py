"""A user's own page: password, app passwords, two-factor set-up, API tokens, the Apple
profile; and that it only ever shows the signed-in user's own data."""

from __future__ import annotations

import html
import plistlib
import re
import time

import pyotp
import pytest

from tests.support.clientconfig import mobileconfig_problems
from tests.support.instance import PASSWORD
from tests.support.panel import ADMIN, USER, Panel, flashes, text

NEW_PASSWORD = "my new long password"


@pytest.fixture
def panel(tmp_path, dns_server):
    panel = Panel.create(tmp_path, dns_server)
    panel.login(USER)
    return panel


def after(panel, r) -> list[str]:
    assert r.status_code in (302, 303), r.status_code
    return flashes(panel.follow(r))


def by_id(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}">(.*?)<', page, re.S)
    assert match, f"no #{element_id} on the page"
    return html.unescape(match.group(1)).strip()


# --- password ---


def test_change_password(panel):
    other = panel.another()
    other.login(USER)
    r = panel.post("/account/password", {"current": PASSWORD, "password": NEW_PASSWORD,
                                         "password2": NEW_PASSWORD})
    assert "Password changed. Other sessions are signed out." in after(panel, r)
    assert panel.accounts.authenticate(USER, NEW_PASSWORD) is not None
    assert panel.get("/account/").status_code == 200  # this session carries on
    assert other.get("/account/").status_code == 302  # the other one is over


@pytest.mark.parametrize("form, error", [
    ({"current": "wrong", "password": NEW_PASSWORD, "password2": NEW_PASSWORD},
     "Your current password is not right."),
    ({"current": PASSWORD, "password": NEW_PASSWORD, "password2": "different"},
     "The two new passwords differ."),
    ({"current": PASSWORD, "password": "short", "password2": "short"}, "too short"),
])
def test_change_password_errors(panel, form, error):
    messages = after(panel, panel.post("/account/password", form))
    assert any(error in m for m in messages), messages
    assert panel.accounts.authenticate(USER, PASSWORD) is not None
    assert panel.get("/account/").status_code == 200


def test_an_app_password_is_not_the_current_password(panel):
    _id, app_password = panel.accounts.add_app_password(USER, "phone")
    r = panel.post("/account/password", {"current": app_password, "password": NEW_PASSWORD,
                                         "password2": NEW_PASSWORD})
    assert "Your current password is not right." in after(panel, r)


# --- app passwords ---


def test_app_password_shown_once_works_and_is_revocable(panel):
    r = panel.post("/account/app-passwords", {"name": "Phone"})
    assert r.status_code == 200
    secret = by_id(text(r), "new-app-password")
    assert re.fullmatch(r"[a-z2-9]{4}(-[a-z2-9]{4}){4}", secret)
    assert "no-store" in r.headers["Cache-Control"]
    user = panel.accounts.authenticate(USER, secret)
    assert user is not None and user.address == USER
    page = text(panel.get("/account/"))
    assert "<td>Phone</td>" in page and secret not in page
    [listed] = panel.accounts.list_app_passwords(USER)
    r = panel.post(f"/account/app-passwords/{listed.id}/revoke")
    assert any("App password revoked" in m for m in after(panel, r))
    assert panel.accounts.authenticate(USER, secret) is None
    assert panel.accounts.list_app_passwords(USER) == []


def test_app_password_name_errors(panel):
    for name, error in (("", "Name is required."), ("x" * 81, "too long"),
                        ("a\r\nb", "must be one line")):
        messages = after(panel, panel.post("/account/app-passwords", {"name": name}))
        assert any(error in m for m in messages), (name, messages)
    assert panel.accounts.list_app_passwords(USER) == []


def test_names_are_escaped(panel):
    r = panel.post("/account/app-passwords", {"name": "<script>alert(1)</script>"})
    for page in (text(r), text(panel.get("/account/"))):
        assert "<script>alert(1)" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# --- one user never sees another's ---


def test_only_your_own_credentials_are_shown_or_revocable(panel):
    store = panel.accounts
    admin_pid, admin_secret = store.add_app_password(ADMIN, "admin-laptop")
    admin_tid, _token = store.add_api_token(ADMIN, "admin-backup")
    store.add_app_password(USER, "user-phone")
    page = text(panel.get("/account/"))
    assert "user-phone" in page
    assert "admin-laptop" not in page and "admin-backup" not in page and ADMIN not in page
    # Another user's id in the URL: refused, and theirs keeps working.
    r = panel.post(f"/account/app-passwords/{admin_pid}/revoke")
    assert any("no app password" in m for m in after(panel, r))
    r = panel.post(f"/account/tokens/{admin_tid}/revoke")
    assert any("no API token" in m for m in after(panel, r))
    assert [p.id for p in store.list_app_passwords(ADMIN)] == [admin_pid]
    assert [t.id for t in store.list_api_tokens(ADMIN)] == [admin_tid]
    assert store.authenticate(ADMIN, admin_secret) is not None
    # A form field naming another user is ignored: there is no such field.
    panel.post("/account/app-passwords", {"name": "sneaky", "address": ADMIN})
    assert [p.name for p in store.list_app_passwords(ADMIN)] == ["admin-laptop"]
    assert "sneaky" in [p.name for p in store.list_app_passwords(USER)]


def test_apple_profile_is_for_the_signed_in_user(panel):
    r = panel.post("/account/apple-profile", {"device": "iPad", "address": ADMIN})
    assert r.status_code == 200
    assert r.mimetype == "application/x-apple-aspen-config"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Content-Disposition"] == \
        'attachment; filename="user-at-example.test.mobileconfig"'
    assert mobileconfig_problems(r.data) == []
    [mail] = plistlib.loads(r.data)["PayloadContent"]
    assert mail["EmailAddress"] == USER
    assert mail["IncomingMailServerUsername"] == USER
    password = mail["IncomingPassword"]
    assert panel.accounts.authenticate(USER, password) is not None
    assert panel.accounts.authenticate(ADMIN, password) is None
    assert [p.name for p in panel.accounts.list_app_passwords(USER)] == ["iPad (profile)"]
    assert panel.accounts.list_app_passwords(ADMIN) == []


# --- two-factor ---


def begin_totp(panel) -> tuple[str, str]:
    r = panel.post("/account/totp/begin")
    assert r.status_code == 200
    page = text(r)
    return page, by_id(page, "totp-secret")


def test_totp_set_up(panel):
    page, secret = begin_totp(panel)
    svg = re.search(r'<div class="qr">(<svg.*?</svg>)</div>', page, re.S)
    assert svg and 'class="qrline"' in svg.group(1)
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    assert not panel.accounts.totp_enabled(USER)  # not until a code confirms it
    r = panel.post("/account/totp/enable", {"code": pyotp.TOTP(secret).now()})
    assert r.status_code == 200
    codes = by_id(text(r), "recovery-codes").split("\n")
    assert len(codes) == 10 and len(set(codes)) == 10
    assert panel.accounts.totp_enabled(USER)
    page = text(panel.get("/account/"))
    assert "10 recovery codes left." in page and secret not in page
    # The next sign-in asks for a code, and a recovery code from the page works.
    other = panel.another()
    other.post("/login", {"address": USER, "password": PASSWORD})
    assert other.post("/login/code", {"code": codes[0]}).status_code == 302
    assert other.get("/account/").status_code == 200


def test_totp_wrong_code(panel):
    _page, secret = begin_totp(panel)
    totp = pyotp.TOTP(secret)
    wrong = "000000" if totp.now() != "000000" and totp.at(time.time() - 30) != "000000" \
        and totp.at(time.time() + 30) != "000000" else "999999"
    messages = after(panel, panel.post("/account/totp/enable", {"code": wrong}))
    assert any("wrong code" in m for m in messages), messages
    assert not panel.accounts.totp_enabled(USER)
    # The secret was used up: the set-up starts again rather than accept a later try.
    messages = after(panel, panel.post("/account/totp/enable", {"code": totp.now()}))
    assert "Start the set-up again." in messages
    assert not panel.accounts.totp_enabled(USER)


def test_totp_disable_needs_the_password(panel):
    _page, secret = begin_totp(panel)
    panel.post("/account/totp/enable", {"code": pyotp.TOTP(secret).now()})
    messages = after(panel, panel.post("/account/totp/disable", {"current": "wrong"}))
    assert "Your current password is not right." in messages
    assert panel.accounts.totp_enabled(USER)
    messages = after(panel, panel.post("/account/totp/disable", {"current": PASSWORD}))
    assert "Two-factor sign-in is off." in messages
    assert not panel.accounts.totp_enabled(USER)
    assert panel.accounts.recovery_codes_left(USER) == 0


# --- API tokens ---


def test_api_tokens_for_admins(tmp_path, dns_server):
    panel = Panel.create(tmp_path, dns_server)
    panel.login(ADMIN)
    assert 'id="create-token"' in text(panel.get("/account/"))
    r = panel.post("/account/tokens", {"name": "backup script"})
    assert r.status_code == 200
    token = by_id(text(r), "new-token")
    assert token.startswith("mst_")
    assert panel.accounts.authenticate_token(token).address == ADMIN
    page = text(panel.get("/account/"))
    assert "<td>backup script</td>" in page and token not in page
    [listed] = panel.accounts.list_api_tokens(ADMIN)
    r = panel.post(f"/account/tokens/{listed.id}/revoke")
    assert "API token revoked." in after(panel, r)
    assert panel.accounts.authenticate_token(token) is None


def test_no_api_tokens_for_users(panel):
    assert 'id="create-token"' not in text(panel.get("/account/"))
    assert panel.post("/account/tokens", {"name": "x"}).status_code == 403
    assert panel.accounts.list_api_tokens(USER) == []
