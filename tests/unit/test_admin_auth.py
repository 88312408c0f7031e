"""Signing in to the panel: password, the TOTP or recovery-code step, throttling, the session
cookie, and when a session ends."""

from __future__ import annotations

import re
import time

import pyotp
import pytest

from tests.support.instance import PASSWORD
from tests.support.panel import ADMIN, USER, Panel, text

GENERIC = "Wrong address or password."


@pytest.fixture
def panel(tmp_path, dns_server):
    return Panel.create(tmp_path, dns_server)


def signed_in(panel) -> bool:
    r = panel.get("/account/")
    assert r.status_code in (200, 302)
    return r.status_code == 200


def test_login_and_the_session_cookie(panel):
    assert not signed_in(panel)
    r = panel.login(USER)
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("__Host-mailstead=")
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
    assert {"secure", "httponly", "path", "samesite"} <= attrs.keys()
    assert attrs["path"] == "Path=/" and attrs["samesite"] == "SameSite=Lax"
    assert "domain" not in attrs  # __Host- cookies must be host-only
    # The browser sends it back, and it is what keeps us signed in.
    assert panel.session_cookie() is not None
    assert signed_in(panel)
    page = text(panel.get("/account/"))
    assert USER in page
    panel.client.delete_cookie("__Host-mailstead", domain="localhost")
    assert not signed_in(panel)


def test_wrong_password_is_401_with_a_generic_message(panel):
    attempts = ((USER, "wrong password!"), ("nobody@example.test", PASSWORD),
                ("not an address", PASSWORD), (USER, ""))
    for i, (address, password) in enumerate(attempts):
        # Each from its own address: the throttle is tested below.
        r = panel.post("/login", {"address": address, "password": password},
                       environ_base={"REMOTE_ADDR": f"192.0.2.{i + 1}"})
        assert r.status_code == 401, address
        page = text(r)
        assert GENERIC in page
        assert "no mailbox" not in page.lower() and "unknown" not in page.lower()
        assert not signed_in(panel)


def test_login_page_keeps_the_address_but_never_the_password(panel):
    r = panel.post("/login", {"address": USER, "password": "s3cret-typo"})
    assert f'value="{USER}"' in text(r)
    assert "s3cret-typo" not in text(r)


def test_an_app_password_does_not_open_the_panel(panel):
    _id, app_password = panel.accounts.add_app_password(USER, "phone")
    assert panel.accounts.authenticate(USER, app_password) is not None  # it is valid...
    r = panel.post("/login", {"address": USER, "password": app_password})
    assert r.status_code == 401  # ...for mail apps only
    assert GENERIC in text(r)
    assert not signed_in(panel)


def test_a_disabled_user_cannot_log_in_and_is_signed_out(panel):
    panel.login(USER)
    panel.accounts.update_user(USER, disabled=True)
    assert not signed_in(panel)
    r = panel.post("/login", {"address": USER, "password": PASSWORD})
    assert r.status_code == 401 and GENERIC in text(r)


def test_a_deleted_user_is_signed_out(panel):
    panel.login(USER)
    panel.accounts.delete_user(USER)
    assert not signed_in(panel)


def test_session_ends_when_the_password_changes_elsewhere(panel):
    panel.login(USER)
    other = panel.another()
    other.login(USER)
    panel.accounts.set_password(USER, "another password 1")
    r = panel.get("/account/")
    assert r.status_code == 302 and r.headers["Location"].endswith("/login")
    assert not signed_in(other)
    # The old password no longer works, the new one does.
    assert panel.post("/login", {"address": USER, "password": PASSWORD}).status_code == 401
    panel.login(USER, "another password 1")
    assert signed_in(panel)


def test_logout_is_post_only(panel):
    panel.login(USER)
    assert panel.get("/logout").status_code == 405
    assert signed_in(panel)
    r = panel.post("/logout")
    assert r.status_code == 302 and r.headers["Location"].endswith("/login")
    assert not signed_in(panel)


def test_login_returns_to_the_page_asked_for(panel):
    r = panel.get("/dns/example.test?check=1")
    assert r.headers["Location"].endswith("/login")
    r = panel.login(ADMIN)
    assert r.headers["Location"] == "/dns/example.test?check=1"
    assert panel.get("/login").status_code == 302  # already signed in: no form


def test_login_starts_a_fresh_session(panel):
    token_before = panel.csrf_token()
    with panel.client.session_transaction(base_url="https://localhost") as s:
        s["planted"] = "by whoever had the browser before"
    panel.login(USER)
    with panel.client.session_transaction(base_url="https://localhost") as s:
        assert "planted" not in s
    assert panel.csrf_token() != token_before


def test_repeated_failures_are_throttled(tmp_path, dns_server):
    panel = Panel.create(tmp_path, dns_server, extra_config="auth_failure_delay = 0.5")
    for _ in range(2):  # authlimit.FREE_FAILURES
        assert panel.post("/login", {"address": USER, "password": "guess"}).status_code == 401
    # The next attempt waits, even with the right password, and is not checked at all.
    r = panel.post("/login", {"address": USER, "password": PASSWORD})
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "1"
    assert "Too many failed attempts" in text(r)
    assert not signed_in(panel)
    # Another browser from the same address is held back too.
    assert panel.another().post("/login", {"address": ADMIN, "password": PASSWORD}
                                ).status_code == 429
    time.sleep(0.6)
    panel.login(USER)


def test_throttle_counts_the_account_however_its_address_is_spelt(tmp_path, dns_server):
    panel = Panel.create(tmp_path, dns_server, extra_config="auth_failure_delay = 5")
    spellings = [USER, '"user"@example.test', "user@example.test.", "USER@EXAMPLE.TEST"]
    for i in range(2):
        r = panel.post("/login", {"address": USER, "password": "guess"},
                       environ_base={"REMOTE_ADDR": f"192.0.2.{i + 1}"})
        assert r.status_code == 401
    for i, address in enumerate(spellings):
        r = panel.post("/login", {"address": address, "password": "guess"},
                       environ_base={"REMOTE_ADDR": f"198.51.100.{i + 1}"})
        assert r.status_code == 429, address


# --- two factors ---


def enable_totp(store, address) -> tuple[pyotp.TOTP, list[str]]:
    secret = store.totp_begin(address)
    totp = pyotp.TOTP(secret)
    codes = store.totp_enable(address, secret, totp.now())
    return totp, codes


def next_code(totp: pyotp.TOTP) -> str:
    # The code that enabled TOTP is spent (RFC 6238 §5.2), and so is each one used to sign in;
    # the next time step's code is accepted (one step of clock drift either side).
    return totp.at(time.time() + 30)


def test_totp_login(panel):
    totp, _codes = enable_totp(panel.accounts, USER)
    r = panel.post("/login", {"address": USER, "password": PASSWORD})
    assert r.status_code == 302 and r.headers["Location"].endswith("/login/code")
    # The password alone is not a session.
    assert not signed_in(panel)
    assert panel.get("/login/code").status_code == 200
    r = panel.post("/login/code", {"code": "000000" if next_code(totp) != "000000" else "1"})
    assert r.status_code == 401 and "not right" in text(r)
    assert not signed_in(panel)
    code = next_code(totp)
    r = panel.post("/login/code", {"code": f"{code[:3]} {code[3:]}"})
    assert r.status_code == 302 and not r.headers["Location"].endswith("/login")
    assert signed_in(panel)
    # The same code does not work twice.
    other = panel.another()
    other.post("/login", {"address": USER, "password": PASSWORD})
    assert other.post("/login/code", {"code": code}).status_code == 401
    assert not signed_in(other)


def test_recovery_code_works_once(panel):
    _totp, codes = enable_totp(panel.accounts, USER)
    assert len(codes) == 10
    panel.post("/login", {"address": USER, "password": PASSWORD})
    r = panel.post("/login/code", {"code": codes[3].upper()})
    assert r.status_code == 302 and signed_in(panel)
    assert panel.accounts.recovery_codes_left(USER) == 9
    assert "9 recovery codes left" in text(panel.get("/account/"))
    other = panel.another()
    other.post("/login", {"address": USER, "password": PASSWORD})
    assert other.post("/login/code", {"code": codes[3]}).status_code == 401
    assert not signed_in(other)


def test_code_step_needs_the_password_step_first(panel):
    enable_totp(panel.accounts, USER)
    assert panel.get("/login/code").headers["Location"].endswith("/login")
    r = panel.post("/login/code", {"code": "123456"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/login")
    # A wrong password never reaches the code step.
    panel.post("/login", {"address": USER, "password": "wrong"})
    assert panel.get("/login/code").headers["Location"].endswith("/login")


def test_code_step_expires(panel):
    totp, _ = enable_totp(panel.accounts, USER)
    panel.post("/login", {"address": USER, "password": PASSWORD})
    with panel.client.session_transaction(base_url="https://localhost") as s:
        s["pending"] = {**s["pending"], "at": s["pending"]["at"] - 301}
    r = panel.post("/login/code", {"code": next_code(totp)})
    assert r.status_code == 302 and r.headers["Location"].endswith("/login")
    assert not signed_in(panel)


def test_code_guesses_are_throttled_even_with_the_password(tmp_path, dns_server):
    # Knowing the password must not reset the account's count of wrong codes: else guesses
    # from many addresses, each signing in again first, would never slow down.
    panel = Panel.create(tmp_path, dns_server, extra_config="auth_failure_delay = 5")
    totp, _ = enable_totp(panel.accounts, USER)
    wrong = "000000" if next_code(totp) != "000000" else "111111"
    answers = []
    for i in range(3):
        env = {"REMOTE_ADDR": f"203.0.113.{i + 1}"}
        browser = panel.another()
        r = browser.post("/login", {"address": USER, "password": PASSWORD}, environ_base=env)
        if r.status_code == 302:
            r = browser.post("/login/code", {"code": wrong}, environ_base=env)
        answers.append(r.status_code)
    assert answers == [401, 401, 429]
    assert re.fullmatch(r"\d+", r.headers["Retry-After"])


@pytest.mark.parametrize("path", ["//evil.test", "/\\evil.test", "//evil.test/domains/",
                                  "/%5Cevil.test/"])
def test_no_redirect_off_site_after_login(panel, path):
    r = panel.client.get("/", base_url="https://localhost", environ_overrides={"PATH_INFO": path})
    assert r.headers["Location"] == "/login"
    r = panel.login(ADMIN)
    assert r.headers["Location"] == "/"
