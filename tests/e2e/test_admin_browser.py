"""The admin panel in a real headless Chromium: log in, create a mailbox, then that mailbox
receives over SMTP and logs in over IMAP; screenshots of the main pages saved as test artifacts
(tests/artifacts/panel/, or $ARTIFACTS_DIR/panel/).

One instance and one browser for the module (about 20 s in all), so the tests run in file
order and build on one another the way an admin's visit would: the session from the login test
carries on (a test that finds itself signed out signs in again), and the later tests count on
the mailbox and the alias made by the earlier ones.
"""

from __future__ import annotations

import imaplib
import re
import ssl
import time
from email import policy
from email.message import EmailMessage

import pytest

from tests.support.browser import DESKTOP, PHONE, Browser, launch
from tests.support.instance import PASSWORD, Instance

pytestmark = pytest.mark.e2e

ADMIN = "admin@example.test"
NEW_PASSWORD = "purple monkey dishwasher 42"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STYLED_BACKGROUND = "rgb(246, 247, 249)"  # --bg of admin/static/style.css on <html>

@pytest.fixture(scope="module")
def panel(tmp_path_factory, dns_server):
    inst = Instance(tmp_path_factory.mktemp("panel"), dns_server.nameserver)
    inst.add_user(ADMIN, admin=True)
    inst.start()
    yield inst
    inst.stop()


@pytest.fixture(scope="module")
def browser(panel, tmp_path_factory):
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    with launch(f"https://127.0.0.1:{panel.ports['admin']}", log_path=log) as b:
        # With its cache on, as a user's browser: stylesheets are revalidated (304), which
        # Hypercorn's WSGI wrapper once turned into 500s (test_stylesheet_on_repeat_visits).
        b.use_cache(True)
        yield b


@pytest.fixture
def signed_in(browser, panel) -> Browser:
    browser.get("/")
    if browser.path.startswith("/login"):
        sign_in(browser)
    assert not browser.path.startswith("/login"), browser.text("main")
    return browser


def sign_in(b: Browser, address: str = ADMIN, password: str = PASSWORD) -> None:
    b.fill("#address", address)
    b.fill("#password", password)
    b.click("#sign-in")


def styled(b: Browser) -> bool:
    return b.computed("html", "background-color") == STYLED_BACKGROUND


def shoot(b: Browser, name: str) -> None:
    """The artifact ``<name>.png`` of the whole page, which must have its stylesheet."""
    assert styled(b), f"{b.path} has no stylesheet"
    path = b.screenshot(name)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), path
    assert len(data) > 10_000, f"{path}: only {len(data)} bytes"


def imap_fetch_subjects(panel: Instance, address: str, password: str) -> list[str]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with imaplib.IMAP4_SSL("127.0.0.1", panel.ports["imaps"], ssl_context=ctx,
                           timeout=10) as imap:
        imap.login(address, password)
        status, _ = imap.select("INBOX")
        assert status == "OK"
        status, data = imap.search(None, "ALL")
        assert status == "OK"
        subjects = []
        for num in data[0].split():
            status, parts = imap.fetch(num, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert status == "OK"
            subjects.append(parts[0][1].decode().partition(":")[2].strip())
        imap.logout()
        return subjects


def send(panel: Instance, to: str, subject: str) -> None:
    msg = EmailMessage()
    msg["From"] = "bob@remote.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}@remote.test>"
    msg.set_content("Sent over SMTP to a mailbox made in the panel.\n")
    assert panel.send(to, msg.as_bytes(policy=policy.SMTP)) == {}


# --- the tests, in the order an admin would go ---


def test_login_shows_error_then_signs_in(browser, panel):
    browser.get("/")
    browser.wait_for_path("/login")  # not signed in: every page leads here
    shoot(browser, "login")
    sign_in(browser, password="not the password")
    assert browser.text("#error") == "Wrong address or password."
    assert browser.find("#address").get_attribute("value") == ADMIN  # kept for the retry
    sign_in(browser)
    browser.wait_for_path("/")
    assert browser.path == "/"
    assert "Overview" in browser.driver.title
    # The session cookie survives on https://127.0.0.1 despite the untrusted certificate:
    # "__Host-" demands Secure, host-only and path /, and Chromium honours all three.
    cookie = browser.cookie("__Host-mailstead")
    assert cookie is not None
    assert cookie["secure"] and cookie["httpOnly"] and cookie["path"] == "/"
    assert cookie["domain"] == "127.0.0.1" and cookie["sameSite"] == "Lax"


def test_overview(signed_in):
    b = signed_in
    assert b.text("#domain-count") == "1"
    assert b.text("#mailbox-count") == "1"
    shoot(b, "home")


def test_create_mailbox_then_it_receives_over_smtp_and_logs_in_over_imap(signed_in, panel):
    b = signed_in
    b.get("/mailboxes/")
    b.fill("#new-local", "carol")
    b.fill("#new-password", NEW_PASSWORD)
    b.fill("#new-password2", NEW_PASSWORD)
    b.click("#create-mailbox")
    assert b.path == "/mailboxes/"
    assert "Created carol@example.test." in b.text(".flash.ok")
    assert "carol@example.test" in b.text("#mailboxes")
    shoot(b, "mailboxes")

    send(panel, "carol@example.test", "Hello Carol from the MX")
    assert len(panel.messages("carol@example.test")) == 1
    assert imap_fetch_subjects(panel, "carol@example.test", NEW_PASSWORD) == [
        "Hello Carol from the MX"]


def test_mismatched_passwords_are_refused(signed_in, panel):
    b = signed_in
    b.get("/mailboxes/")
    b.fill("#new-local", "dave")
    b.fill("#new-password", NEW_PASSWORD)
    b.fill("#new-password2", NEW_PASSWORD + "x")
    b.click("#create-mailbox")
    assert b.text(".flash.error") == "The two passwords differ."
    assert "dave@example.test" not in b.text("#mailboxes")


def test_add_alias_that_delivers(signed_in, panel):
    b = signed_in
    b.get("/aliases/")
    b.fill("input[name=local]", "sales")
    b.fill("input[name=destinations]", f"carol@example.test, {ADMIN}")
    b.click("#add-alias")
    assert "sales@example.test now goes to" in b.text(".flash.ok")
    assert "sales@example.test" in b.text("main table")
    shoot(b, "aliases")

    send(panel, "sales@example.test", "Sales enquiry")
    assert len(panel.messages(ADMIN)) == 1
    assert len(panel.messages("carol@example.test")) == 2


def test_dns_page_checks_against_dns(signed_in, panel, dns_server):
    b = signed_in
    b.get("/dns/")
    b.click("a[href='/dns/example.test']")
    assert b.path == "/dns/example.test"
    rows = b.all("#records tbody tr")
    assert any("MX" in r.text and "mail.example.test" in r.text for r in rows)
    b.click("#check-dns")
    assert b.path == "/dns/example.test?check=1"
    # The test zone has MX and A for mail.example.test but no SPF, DKIM or DMARC.
    summary = b.text("#check-summary")
    assert "need attention" in summary
    statuses = {r.find_element("css selector", "td:nth-child(2)").text:
                r.find_element("css selector", ".badge").text
                for r in b.all("#records tbody tr")}
    assert statuses["MX"] == "ok"
    assert ("example.test.", "MX") in dns_server.queries
    shoot(b, "dns")


def test_dns_check_fits_the_screen(signed_in):
    b = signed_in
    b.get("/dns/example.test?check=1")
    overflow = b.overflow_x(DESKTOP[0])
    assert overflow == 0, f"the DNS check page is {overflow} px wider than the window"


def test_usage_shown_after_delivery(signed_in, panel):
    b = signed_in
    assert len(panel.messages("carol@example.test")) == 2  # from the tests above
    b.get("/mailboxes/")
    row = next(r for r in b.all("#mailboxes tbody tr") if "carol@example.test" in r.text)
    used = row.find_element("css selector", "td:nth-child(2)").text
    assert re.fullmatch(r"[1-9][\d.]* [KMGT]?B", used), f"carol uses {used!r}"


def test_certificate_page(signed_in):
    b = signed_in
    b.get("/certificate/")
    assert "mail.example.test" in b.text("#cert-names")
    assert b.text("#cert-verdict") == "Managed by hand ([acme] off)"
    shoot(b, "certificate")


def test_app_password_is_shown_once_and_logs_in_over_imap(signed_in, panel):
    b = signed_in
    b.get("/account/")
    b.fill("#app-password-name", "Phone")
    b.click("#create-app-password")
    secret = b.text("#new-app-password").strip()
    assert len(secret) >= 16
    shoot(b, "account")
    assert imap_fetch_subjects(panel, ADMIN, secret) == ["Sales enquiry"]
    b.get("/account/")
    assert not b.all("#new-app-password")  # shown once only
    assert "Phone" in b.text("main table")


@pytest.mark.parametrize("page", [
    "mailboxes",
    "account",
])
def test_phone_layout(signed_in, page):
    b = signed_in
    b.viewport(*PHONE, mobile=True)
    try:
        b.get(f"/{page}/")
        shoot(b, f"{page}-phone")
        overflow = b.overflow_x(PHONE[0])
    finally:
        b.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert overflow == 0, f"/{page}/ is {overflow} px wider than a {PHONE[0]} px phone"


def test_stylesheet_on_repeat_visits(signed_in, panel):
    """A browser with its cache revalidates style.css on each page: 304 must work."""
    b = signed_in
    b.use_cache(True)
    try:
        unstyled = []
        for path in ("/mailboxes/", "/aliases/", "/certificate/", "/account/", "/"):
            b.get(path)
            if not styled(b):
                unstyled.append(path)
    finally:
        b.use_cache(True)
    errors = [line for line in panel.log().splitlines() if "/static/" in line and '" 500 ' in line]
    assert not unstyled and not errors, f"unstyled: {unstyled}\n" + "\n".join(errors)


def test_sign_out_returns_to_login(signed_in):
    b = signed_in
    b.click("form[action='/logout'] button")
    b.wait_for_path("/login")
    assert b.cookie("__Host-mailstead") is None or "user" not in str(b.cookie("__Host-mailstead"))
    b.get("/mailboxes/")
    assert b.path.startswith("/login")


def test_without_javascript(panel):
    """Every form is a plain HTML form: the panel works with JavaScript turned off."""
    with launch(f"https://127.0.0.1:{panel.ports['admin']}", javascript=False) as b:
        b.get("data:text/html,<title>static</title><script>document.title='scripted'</script>")
        assert b.driver.title == "static"  # JavaScript really is off
        b.get("/")
        b.wait_for_path("/login")
        sign_in(b)
        b.wait_for_path("/")
        b.get("/mailboxes/")
        b.fill("#new-local", "nojs")
        b.fill("#new-password", NEW_PASSWORD)
        b.fill("#new-password2", NEW_PASSWORD)
        b.click("#create-mailbox")
        assert "nojs@example.test" in b.text("#mailboxes")
    store = panel.accounts
    try:
        assert store.get_user("nojs@example.test") is not None
    finally:
        store.close()
