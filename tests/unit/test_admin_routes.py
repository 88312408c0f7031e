"""Every route of the panel, walked: who may reach it, CSRF on every form, and the security
headers. The lists of public endpoints and of blueprints are explicit on purpose: a new public
route or a new blueprint fails here until someone decides which side of the gate it is on."""

from __future__ import annotations

import pytest

from admin.auth import ADMIN_BLUEPRINTS
from tests.support.panel import ADMIN, USER, Panel

# Endpoint -> the answers it may give to a stranger (any method it has, dummy URL values).
PUBLIC = {
    "auth.login": {200, 401},  # the form; a POST without credentials is a failed login
    "auth.second_factor": {302},  # no password step yet: back to /login
    "static": {200},
    "wellknown.mta_sts": {404},  # only on Host mta-sts.<domain>
    "wellknown.acme_challenge": {404},  # no such token pending
    "wellknown.autoconfig": {404},  # Host "localhost" is not one of ours
    "wellknown.autodiscover": {200},  # always 200, the error inside the XML (as Exchange)
}
# Blueprints any signed-in user may use; with ADMIN_BLUEPRINTS and the public "wellknown"
# these must be every blueprint the app has.
USER_BLUEPRINTS = {"auth", "home", "account"}
# Token-authenticated (Authorization: Bearer), no session: a stranger gets 401.
TOKEN_BLUEPRINTS = {"api"}
DUMMY = {"domain": "example.test", "address": USER, "qid": "0" * 21, "pid": 1, "tid": 1,
         "token": "tok", "filename": "style.css", "source": "sales@example.test"}
NO_BODY_METHODS = {"GET", "HEAD", "OPTIONS"}


@pytest.fixture
def panel(tmp_path, dns_server):
    return Panel.create(tmp_path, dns_server)


def routes(app):
    """(endpoint, blueprint, method, url) for every rule and method, URL values filled in."""
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        unknown = rule.arguments - DUMMY.keys()
        assert not unknown, f"{rule.rule}: add a dummy value for {unknown} to DUMMY"
        with app.test_request_context(base_url="https://localhost"):
            from flask import url_for

            url = url_for(rule.endpoint, **{a: DUMMY[a] for a in rule.arguments})
        blueprint = rule.endpoint.rpartition(".")[0] or None
        for method in sorted(rule.methods):
            yield rule.endpoint, blueprint, method, url


def is_login_redirect(r) -> bool:
    return r.status_code == 302 and r.headers["Location"].endswith("/login")


def test_every_blueprint_is_classified(panel):
    known = ADMIN_BLUEPRINTS | USER_BLUEPRINTS | TOKEN_BLUEPRINTS | {"wellknown"}
    assert set(panel.app.blueprints) - known == set(), "decide who may use the new blueprint"
    assert set(panel.app.blueprints) >= ADMIN_BLUEPRINTS


def test_strangers_reach_only_the_public_endpoints(panel):
    token = panel.csrf_token()  # with it a POST gets past CSRF and reaches the login gate
    seen = set()
    for endpoint, blueprint, method, url in routes(panel.app):
        data = None if method in NO_BODY_METHODS else {"csrf_token": token}
        r = panel.request(method, url, data=data, headers={"Referer": "https://localhost/"})
        where = f"{method} {url} ({endpoint})"
        assert r.status_code != 500, where
        if endpoint in PUBLIC:
            seen.add(endpoint)
            allowed = PUBLIC[endpoint] | ({200} if method == "OPTIONS" else set())
            assert r.status_code in allowed, f"{where}: {r.status_code}"
        elif blueprint in TOKEN_BLUEPRINTS:
            assert r.status_code == 401, f"{where}: {r.status_code} without a token"
        else:
            assert is_login_redirect(r), f"{where}: {r.status_code}, not sent to /login"
    assert seen == PUBLIC.keys(), f"public endpoints gone: {PUBLIC.keys() - seen}"


def test_unknown_paths_also_go_to_login(panel):
    # Nothing about which URLs exist is told before signing in.
    for path in ("/nope", "/domains/x/y/z", "/.git/config", "/admin.php"):
        assert is_login_redirect(panel.get(path)), path


def test_non_admin_gets_403_from_every_admin_page(panel):
    panel.login(USER)
    token = panel.csrf_token()
    checked = set()
    for _endpoint, blueprint, method, url in routes(panel.app):
        if blueprint not in ADMIN_BLUEPRINTS:
            continue
        data = None if method in NO_BODY_METHODS else {"csrf_token": token}
        r = panel.request(method, url, data=data, headers={"Referer": "https://localhost/"})
        assert r.status_code == 403, f"{method} {url}: {r.status_code}"
        checked.add(blueprint)
    assert checked == ADMIN_BLUEPRINTS
    # ...while the user's own pages work, and the admin-only token form is refused too.
    assert panel.get("/account/").status_code == 200
    assert panel.post("/account/tokens", {"name": "script"}).status_code == 403
    assert panel.accounts.list_api_tokens(USER) == []
    # Nothing in the navigation points at admin pages.
    page = panel.get("/account/").get_data(as_text=True)
    assert "/domains/" not in page and "/mailboxes/" not in page


def test_admin_pages_render(panel, tmp_path):
    panel.login(ADMIN)
    for endpoint, blueprint, method, url in routes(panel.app):
        if method != "GET" or blueprint not in ADMIN_BLUEPRINTS | {"home", "account"}:
            continue
        r = panel.get(url)
        # queue.show with a dummy id has nothing to show.
        expected = 404 if endpoint == "queue.show" else 200
        assert r.status_code == expected, f"GET {url}: {r.status_code}"


# --- CSRF ---


def state(panel) -> dict:
    store = panel.accounts
    return {
        "domains": store.list_domains(),
        "users": [(u.address, u.is_admin, u.disabled, u.quota_bytes, u.password_changed)
                  for u in store.list_users()],
        "aliases": store.list_aliases(),
        "app_passwords": [store.list_app_passwords(u.address) for u in store.list_users()],
        "tokens": [store.list_api_tokens(u.address) for u in store.list_users()],
        "totp": [store.totp_enabled(u.address) for u in store.list_users()],
        "queue": sorted(m.id for m in panel.inst.spool().list()),
    }


def test_every_form_needs_the_csrf_token(tmp_path, dns_server):
    flushed, renewed = [], []
    panel = Panel.create(tmp_path, dns_server, flush_queue=lambda: flushed.append(1),
                         renew_certificates=lambda: renewed.append(1))
    store = panel.accounts
    store.add_domain("spare.test")
    store.add_alias("sales@example.test", [USER])
    pid, _ = store.add_app_password(ADMIN, "phone")
    tid, _ = store.add_api_token(ADMIN, "script")
    msg = panel.inst.spool().add("a@example.test", ["b@remote.test"], [b"Subject: x\r\n\r\nx\r\n"])
    panel.login(ADMIN)
    # Form data that would succeed with a token: a missing check shows as a change below.
    forms = {
        "domains.add": {"domain": "new.test"},
        "domains.delete": {},
        "mailboxes.add": {"local": "new", "domain": "example.test", "password": "x" * 12,
                          "password2": "x" * 12},
        "mailboxes.password": {"password": "y" * 12},
        "mailboxes.settings": {"quota": "1G", "admin": "1"},
        "mailboxes.delete": {},
        "aliases.add": {"local": "info", "domain": "example.test", "destinations": USER},
        "aliases.delete": {"source": "sales@example.test"},
        "queue.delete": {},
        "account.password": {"current": "correct horse battery", "password": "z" * 12,
                             "password2": "z" * 12},
        "account.add_app_password": {"name": "laptop"},
        "account.add_token": {"name": "other"},
        "account.apple_profile": {"device": "iPhone"},
        "account.totp_disable": {"current": "correct horse battery"},
    }
    values = {"domain": "spare.test", "address": USER, "qid": msg.id, "pid": pid, "tid": tid}
    before = state(panel)
    posts = 0
    for rule in panel.app.url_map.iter_rules():
        blueprint = rule.endpoint.rpartition(".")[0]
        if "POST" not in rule.methods or blueprint in {"wellknown"} | TOKEN_BLUEPRINTS:
            continue
        with panel.app.test_request_context(base_url="https://localhost"):
            from flask import url_for

            url = url_for(rule.endpoint, **{a: values[a] for a in rule.arguments})
        r = panel.post(url, forms.get(rule.endpoint, {}), csrf=False)
        assert r.status_code == 400, f"POST {url} without a token: {r.status_code}"
        # A token from another session is no better.
        r = panel.post(url, {**forms.get(rule.endpoint, {}),
                             "csrf_token": panel.another().csrf_token()})
        assert r.status_code == 400, f"POST {url} with a foreign token: {r.status_code}"
        posts += 1
    assert posts >= 20
    assert state(panel) == before
    assert flushed == [] and renewed == []
    # Still signed in: even the sign-out form needs the token.
    assert panel.get("/account/").status_code == 200


def test_csrf_token_with_a_foreign_referer_is_refused(panel):
    panel.login(ADMIN)
    r = panel.post("/domains/add", {"domain": "new.test"}, referer="https://evil.test/")
    assert r.status_code == 400
    r = panel.post("/domains/add", {"domain": "new.test"}, headers={"Referer": ""})
    assert r.status_code == 400
    assert "new.test" not in panel.accounts.list_domains()


# --- headers ---


def test_security_headers(panel):
    for r in (panel.get("/login"), panel.get("/static/style.css")):
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        assert int(r.headers["Strict-Transport-Security"].split("=")[1].split(";")[0]) >= 15552000
    panel.login(ADMIN)
    for path in ("/", "/account/", "/mailboxes/", "/dns/example.test"):
        r = panel.get(path)
        assert r.status_code == 200
        assert "no-store" in r.headers["Cache-Control"], path
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert "unsafe-inline" not in r.headers["Content-Security-Policy"]
    # The CSP allows no inline script, so the pages must have none.
    page = panel.get("/account/").get_data(as_text=True)
    assert "<script>" not in page and " onclick=" not in page
