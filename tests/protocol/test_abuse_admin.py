"""Password guessing on the admin panel's sign-in form over real HTTPS: 429 while cooling down
(the panel answers instead of sleeping), then a ban: 403 on the connection the guesser holds and
on new ones, and the mail services refuse it too."""

from __future__ import annotations

import http.client
import re
import time
import urllib.parse

import pytest

from tests.support.abuse import BAN_AFTER, DELAY, PASSWORD, WRONG, first_line, source

ADMIN = "ada@example.test"  # in tests.support.abuse.USERS
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def inst(abuse_instance):
    return abuse_instance


class Browser:
    """One keep-alive HTTPS connection from ``ip``, carrying the session cookie like a browser
    (flask-wtf wants the CSRF token and a same-origin Referer over HTTPS)."""

    def __init__(self, inst, ip: str):
        self.origin = f"https://127.0.0.1:{inst.ports['admin']}"
        self.conn = http.client.HTTPSConnection("127.0.0.1", inst.ports["admin"], timeout=10,
                                                context=inst.tls_context(),
                                                source_address=(ip, 0))
        self.cookie = ""

    def request(self, method: str, path: str, form: dict | None = None):
        headers = {"Referer": f"{self.origin}/login"}
        if self.cookie:
            headers["Cookie"] = self.cookie
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        text = resp.read().decode()
        cookie = resp.getheader("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return resp, text

    def login(self, address: str, password: str):
        _, page = self.request("GET", "/login")
        token = _CSRF.search(page)[1]
        return self.request("POST", "/login", {"csrf_token": token, "address": address,
                                               "password": password})

    def close(self):
        self.conn.close()


def test_guessing_cools_down_then_bans_the_client(inst):
    ip = source(41)
    browser = Browser(inst, ip)
    statuses = [browser.login(ADMIN, WRONG)[0].status for _ in range(2)]
    assert statuses == [401, 401]  # two free failures
    resp, page = browser.login(ADMIN, WRONG)  # at once: still cooling down, nothing checked
    assert resp.status == 429 and "Too many failed attempts" in page
    assert int(resp.getheader("Retry-After")) >= 1
    for n in range(2, BAN_AFTER):
        time.sleep(DELAY * 2 ** (n - 2) + 0.05)  # the cool-down doubles with each failure
        assert browser.login(ADMIN, WRONG)[0].status == 401
    log = inst.wait_for_log(f"ban rhost={ip} ")
    assert f'auth failure service=admin rhost={ip} user="{ADMIN}"' in log
    # Banned: the connection it holds gets 403 for every page (the right password too)...
    assert browser.request("GET", "/login")[0].status == 403
    browser.close()
    # ...and so does a new one, before the panel sees the request; the mail services close.
    fresh = Browser(inst, ip)
    resp, text = fresh.request("GET", "/login")
    assert resp.status == 403 and "Too many failed logins" in text
    fresh.close()
    assert first_line(inst, "imap", ip).startswith(b"* BYE [UNAVAILABLE]")
    # Another client signs in (after the account's own cool-down).
    other = Browser(inst, source(42))
    time.sleep(DELAY * 2 ** (BAN_AFTER - 2))
    resp, _ = other.login(ADMIN, PASSWORD)
    assert resp.status == 302 and not resp.getheader("Location").endswith("/login")
    other.close()


def test_bad_api_tokens_count_too(inst):
    ip = source(43)
    browser = Browser(inst, ip)
    for n in range(BAN_AFTER):
        if n >= 2:
            time.sleep(DELAY * 2 ** (n - 2) + 0.05)
        browser.conn.request("GET", "/api/v1/domains",
                             headers={"Authorization": f"Bearer guess-{n}"})
        resp = browser.conn.getresponse()
        resp.read()
        assert resp.status == 401
    browser.close()
    inst.wait_for_log(f"ban rhost={ip} ")
    assert f'service=admin rhost={ip} user="api-token"' in inst.log()


def test_concurrent_connections_get_503(inst):
    ip = source(44)
    held = [Browser(inst, ip) for _ in range(3)]  # [abuse] max_connections_per_ip
    for browser in held:  # each a kept-alive connection
        assert browser.request("GET", "/login")[0].status == 200
    extra = Browser(inst, ip)
    resp, text = extra.request("GET", "/login")
    assert resp.status == 503 and resp.getheader("Retry-After") and "Too many" in text
    extra.close()
    for browser in held:
        browser.close()
