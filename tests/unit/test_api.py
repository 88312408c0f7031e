"""The JSON API (admin/api.py) through Flask's test client, and docs/api.yml against it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

from admin import Services, create_app
from server.queue.spool import Spool
from tests.support.instance import PASSWORD, Instance

REPO = Path(__file__).resolve().parents[2]
HTTPS = {"base_url": "https://mail.example.test"}


@pytest.fixture
def lab(tmp_path, dns_server):
    inst = Instance(tmp_path, dns_server.nameserver)
    inst.add_user("admin@example.test", admin=True)
    inst.add_user("user@example.test")
    flushed, renewed = [], []
    store = inst.accounts
    app = create_app(inst.config, Services(accounts=store, flush_queue=lambda: flushed.append(1),
                                           renew_certificates=lambda: renewed.append(1)),
                     testing=True)
    _, admin_token = store.add_api_token("admin@example.test", "tests")
    _, user_token = store.add_api_token("user@example.test", "tests")
    lab = type("Lab", (), {})()
    lab.inst, lab.store, lab.app, lab.client = inst, store, app, app.test_client()
    lab.flushed, lab.renewed = flushed, renewed
    lab.admin = {"Authorization": f"Bearer {admin_token}"}
    lab.user = {"Authorization": f"Bearer {user_token}"}
    yield lab
    store.close()


def call(lab, method, path, headers=None, **kw):
    return getattr(lab.client, method)(f"/api/v1{path}", headers=headers or lab.admin,
                                       **HTTPS, **kw)


# --- the document ---


def _spec() -> dict:
    return yaml.safe_load((REPO / "docs/api.yml").read_text())


def test_spec_is_valid_openapi():
    validate(_spec())


def test_every_route_is_documented_and_nothing_else(lab):
    documented = {(path, method.upper())
                  for path, item in _spec()["paths"].items()
                  for method in item if method in ("get", "post", "patch", "delete", "put")}
    served = set()
    for rule in lab.app.url_map.iter_rules():
        if rule.endpoint.startswith("api."):
            path = rule.rule.removeprefix("/api/v1")
            for conv in ("<int:pid>", "<qid>", "<domain>", "<address>", "<source>"):
                name = {"<int:pid>": "{id}", "<qid>": "{id}"}.get(conv, "{" + conv[1:-1] + "}")
                path = path.replace(conv, name)
            served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert served == documented


# --- authentication ---


def test_no_token_no_access(lab):
    for headers in ({"X": "y"}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
        resp = call(lab, "get", "/domains", headers=headers)
        assert resp.status_code == 401
        assert resp.get_json() == {"error": "a valid API token is required"}
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_session_cookie_is_not_enough(lab):
    page = lab.client.get("/login", **HTTPS).get_data(as_text=True)
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    # A browser sends Referer on a same-origin POST; flask-wtf insists on it over HTTPS.
    resp = lab.client.post("/login", data={"address": "admin@example.test", "password": PASSWORD,
                                           "csrf_token": token},
                           headers={"Referer": "https://mail.example.test/login"}, **HTTPS)
    assert resp.status_code == 302
    assert lab.client.get("/", **HTTPS).status_code == 200  # the session works for pages
    assert lab.client.get("/api/v1/domains", **HTTPS).status_code == 401


def test_user_token_reaches_only_me(lab):
    assert call(lab, "get", "/mailboxes", lab.user).status_code == 403
    assert call(lab, "post", "/domains", lab.user, json={"name": "x.test"}).status_code == 403
    me = call(lab, "get", "/me", lab.user).get_json()
    assert me["address"] == "user@example.test" and me["admin"] is False


def test_revoked_and_disabled_tokens_refused(lab):
    tid, token = lab.store.add_api_token("admin@example.test", "temp")
    headers = {"Authorization": f"Bearer {token}"}
    assert call(lab, "get", "/domains", headers).status_code == 200
    lab.store.revoke_api_token("admin@example.test", tid)
    assert call(lab, "get", "/domains", headers).status_code == 401
    lab.store.update_user("user@example.test", disabled=True)
    assert call(lab, "get", "/me", lab.user).status_code == 401


def test_guessing_tokens_is_slowed(lab):
    for _ in range(6):
        resp = call(lab, "get", "/domains", {"Authorization": "Bearer mst_wrong_guess"})
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1


# --- operations ---


def test_domains(lab):
    assert call(lab, "get", "/domains").get_json() == {"domains": ["example.test"]}
    resp = call(lab, "post", "/domains", json={"name": "New.Example"})
    assert resp.status_code == 201 and resp.get_json() == {"name": "new.example"}
    dkim = call(lab, "get", "/dkim").get_json()["keys"]
    assert any(k["domain"] == "new.example" and k["txt"].startswith("v=DKIM1") for k in dkim)
    assert call(lab, "delete", "/domains/example.test").status_code == 400  # still has users
    assert call(lab, "delete", "/domains/new.example").status_code == 204
    assert call(lab, "get", "/domains").get_json() == {"domains": ["example.test"]}


def test_mailbox_lifecycle(lab):
    resp = call(lab, "post", "/mailboxes", json={"address": "carol@example.test",
                                                 "password": "a long passphrase",
                                                 "quota_bytes": 1 << 30})
    assert resp.status_code == 201
    assert resp.get_json() == {"address": "carol@example.test", "quota_bytes": 1 << 30,
                               "used_bytes": 0, "admin": False, "disabled": False}
    assert lab.store.authenticate("carol@example.test", "a long passphrase") is not None
    resp = call(lab, "patch", "/mailboxes/carol@example.test",
                json={"password": "another passphrase", "disabled": True})
    assert resp.get_json()["disabled"] is True
    assert lab.store.authenticate("carol@example.test", "another passphrase") is None
    lab.store.update_user("carol@example.test", disabled=False)
    assert lab.store.authenticate("carol@example.test", "another passphrase") is not None
    listed = call(lab, "get", "/mailboxes?domain=example.test").get_json()["mailboxes"]
    assert [m["address"] for m in listed] == ["admin@example.test", "carol@example.test",
                                             "user@example.test"]
    assert call(lab, "delete", "/mailboxes/carol@example.test?purge=true").status_code == 204
    assert call(lab, "get", "/mailboxes/carol@example.test").status_code == 404


def test_mailbox_errors_are_json(lab):
    for payload, field in (({"address": "x@example.test"}, "password"),
                           ({"address": "x@example.test", "password": "short"}, "password"),
                           ({"address": "x@nowhere.test", "password": "long enough!"}, "domain"),
                           ({"address": "x@example.test", "password": "long enough!",
                             "quota_bytes": "lots"}, "quota_bytes")):
        resp = call(lab, "post", "/mailboxes", json=payload)
        assert resp.status_code == 400, payload
        assert field in resp.get_json()["error"]
    assert call(lab, "post", "/mailboxes", data="not json").status_code == 400
    resp = call(lab, "post", "/mailboxes", json={"address": "user@example.test",
                                                 "password": "long enough!"})
    assert resp.status_code == 400 and "exists" in resp.get_json()["error"]


def test_a_token_cannot_lock_its_own_user_out(lab):
    resp = call(lab, "patch", "/mailboxes/admin@example.test", json={"admin": False})
    assert resp.status_code == 400
    assert call(lab, "delete", "/mailboxes/admin@example.test").status_code == 400
    assert lab.store.get_user("admin@example.test").is_admin


def test_aliases(lab):
    resp = call(lab, "post", "/aliases", json={"source": "team@example.test",
                                               "destinations": ["user@example.test",
                                                                "friend@remote.test"]})
    assert resp.status_code == 201
    assert call(lab, "post", "/aliases", json={"source": "@example.test",
                                               "destinations": ["admin@example.test"]}
                ).status_code == 201
    aliases = call(lab, "get", "/aliases").get_json()["aliases"]
    assert {"source": "team@example.test",
            "destinations": ["friend@remote.test", "user@example.test"]} in [
        {"source": a["source"], "destinations": sorted(a["destinations"])} for a in aliases]
    assert call(lab, "delete", "/aliases/team@example.test?destination=friend@remote.test"
                ).status_code == 204
    assert call(lab, "delete", "/aliases/@example.test").status_code == 204
    aliases = call(lab, "get", "/aliases").get_json()["aliases"]
    assert aliases == [{"source": "team@example.test", "destinations": ["user@example.test"]}]
    assert call(lab, "post", "/aliases", json={"source": "a@example.test",
                                               "destinations": []}).status_code == 400


def test_queue(lab):
    msg = Spool(lab.inst.config.queue_dir).add("user@example.test", ["bob@remote.test"],
                                               [b"Subject: hi\r\n\r\nhello\r\n"])
    queued = call(lab, "get", "/queue").get_json()["messages"]
    assert [m["id"] for m in queued] == [msg.id]
    assert queued[0]["recipients"][0]["address"] == "bob@remote.test"
    assert call(lab, "post", "/queue/flush").status_code == 202 and lab.flushed == [1]
    assert call(lab, "delete", f"/queue/{msg.id}").status_code == 204
    assert call(lab, "delete", f"/queue/{msg.id}").status_code == 404
    assert call(lab, "get", "/queue").get_json() == {"messages": []}


def test_certificate(lab):
    cert = call(lab, "get", "/certificate").get_json()
    assert cert["info"]["names"][0] == "mail.example.test" and cert["acme"] is False
    resp = call(lab, "post", "/certificate/renew")
    assert resp.status_code == 409 and lab.renewed == []


def test_dns_records_and_live_check(lab, dns_server):
    records = call(lab, "get", "/dns/example.test").get_json()["records"]
    types = {(r["name"], r["type"]) for r in records}
    assert ("example.test", "MX") in types and ("_dmarc.example.test", "TXT") in types
    checked = call(lab, "get", "/dns/example.test?check=1").get_json()["records"]
    mx = next(r for r in checked if r["type"] == "MX")
    assert mx["status"] == "ok"  # the test zone's MX is mail.example.test
    dmarc = next(r for r in checked if r["name"] == "_dmarc.example.test")
    assert dmarc["status"] == "missing" and "_dmarc.example.test" in dmarc["fix"]
    assert call(lab, "get", "/dns/other.test").status_code == 404


def test_app_passwords_of_my_own(lab):
    resp = call(lab, "post", "/me/app-passwords", lab.user, json={"name": "phone"})
    assert resp.status_code == 201
    made = resp.get_json()
    assert lab.store.authenticate("user@example.test", made["password"]) is not None
    listed = call(lab, "get", "/me/app-passwords", lab.user).get_json()["app_passwords"]
    assert [(p["id"], p["name"]) for p in listed] == [(made["id"], "phone")]
    assert "password" not in listed[0]
    # Another user's token neither sees nor revokes it.
    assert call(lab, "get", "/me/app-passwords").get_json() == {"app_passwords": []}
    assert call(lab, "delete", f"/me/app-passwords/{made['id']}").status_code == 400
    assert lab.store.authenticate("user@example.test", made["password"]) is not None
    assert call(lab, "delete", f"/me/app-passwords/{made['id']}", lab.user).status_code == 204
    assert lab.store.authenticate("user@example.test", made["password"]) is None
