"""Server-side session records: signing out ends a copied cookie too, a password change ends
the other sessions, and a TOTP secret being set up never travels in the cookie."""

from __future__ import annotations

import base64
import zlib

import pyotp
import pytest

from tests.support.instance import PASSWORD
from tests.support.panel import ADMIN, USER, Panel


@pytest.fixture
def panel(tmp_path, dns_server):
    return Panel.create(tmp_path, dns_server)


def _copy_cookie(src: Panel) -> Panel:
    """A thief's browser holding a copy of ``src``'s session cookie."""
    thief = src.another()
    thief.client.set_cookie("__Host-mailstead", src.session_cookie().value, domain="localhost",
                            secure=True, httponly=True)
    return thief


def _cookie_payload(panel: Panel) -> bytes:
    """The (signed, not encrypted) session cookie's content, as anyone holding it can read."""
    value = panel.session_cookie().value
    compressed = value.startswith(".")
    data = value.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return zlib.decompress(raw) if compressed else raw


def test_sign_out_ends_a_copied_cookie(panel):
    panel.login(USER)
    thief = _copy_cookie(panel)
    assert thief.get("/account/").status_code == 200  # the copy works while signed in
    assert panel.post("/logout").status_code == 302
    assert thief.get("/account/").status_code == 302  # and not after signing out


def test_password_change_ends_other_sessions_but_not_this_one(panel):
    panel.login(USER)
    other = panel.another()
    other.login(USER)
    r = panel.post("/account/password", {"current": PASSWORD, "password": "a new passphrase!",
                                         "password2": "a new passphrase!"})
    assert r.status_code in (302, 303)
    assert panel.get("/account/").status_code == 200
    assert other.get("/account/").status_code == 302


def test_admin_password_reset_ends_the_users_sessions(panel):
    user = panel.another()
    user.login(USER)
    panel.login(ADMIN)
    r = panel.post(f"/mailboxes/{USER}/password", {"password": "reset by the admin!"})
    assert r.status_code in (302, 303)
    assert user.get("/account/").status_code == 302


def test_totp_secret_stays_on_the_server(panel):
    panel.login(USER)
    page = panel.post("/account/totp/begin").get_data(as_text=True)
    secret = page.split('id="totp-secret">')[1].split("<")[0].strip()
    assert len(secret) >= 16
    assert secret.encode() not in _cookie_payload(panel)
    code = pyotp.TOTP(secret).now()
    page = panel.post("/account/totp/enable", {"code": code}).get_data(as_text=True)
    assert 'id="recovery-codes"' in page
    assert panel.accounts.totp_enabled(USER)


def test_totp_cannot_be_replaced_while_on(panel):
    panel.login(USER)
    page = panel.post("/account/totp/begin").get_data(as_text=True)
    secret = page.split('id="totp-secret">')[1].split("<")[0].strip()
    panel.post("/account/totp/enable", {"code": pyotp.TOTP(secret).now()})
    r = panel.post("/account/totp/begin")
    assert r.status_code == 303
    assert "turn it off first" in panel.follow(r).get_data(as_text=True)


def test_second_step_restarts_after_a_password_change(panel):
    secret = panel.accounts.totp_begin(USER)
    panel.accounts.totp_enable(USER, secret, pyotp.TOTP(secret).now(), now=None)
    r = panel.post("/login", {"address": USER, "password": PASSWORD})
    assert r.headers["Location"].endswith("/login/code")
    panel.accounts.set_password(USER, "changed meanwhile!")
    # Even a right code no longer completes the login begun with the old password.
    r = panel.post("/login/code", {"code": pyotp.TOTP(secret).now()})
    assert r.status_code == 302 and r.headers["Location"].endswith("/login")
    assert panel.get("/account/").status_code == 302
