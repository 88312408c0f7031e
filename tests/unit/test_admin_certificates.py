"""Certificate page (served certificate, ACME state, renew now) and DKIM page (the records to
publish, split into 255-byte strings)."""

from __future__ import annotations

import html
import json
import re
import time

import pytest

from admin import Services
from server import dkimkeys
from server.acme.manager import status_file
from tests.support.panel import ADMIN, Panel, flashes, instance, text


def make_panel(tmp_path, dns_server, *, acme: bool, status: dict | None = None, **services):
    inst = instance(tmp_path, dns_server.nameserver)
    if acme:
        inst.set_acme({"enabled": True})
    if status is not None:
        status_file(inst.config).write_text(json.dumps(status))
    inst.add_user(ADMIN, admin=True)
    panel = Panel(inst, Services(**services))
    panel.login(ADMIN)
    return panel


def test_self_signed_certificate_managed_by_hand(tmp_path, dns_server):
    panel = make_panel(tmp_path, dns_server, acme=False)
    page = text(panel.get("/certificate/"))
    assert re.search(r'id="cert-names">mail.example.test, localhost<', page)
    assert "CN=mail.example.test" in page
    assert "Managed by hand ([acme] off)" in page
    assert "Automatic renewal" not in page
    assert str(panel.inst.data_dir / "tls" / "cert.pem") in page
    # ACME off: renewing is refused, whatever the server could do.
    r = panel.post("/certificate/renew")
    assert any("ACME is off" in m for m in flashes(panel.follow(r)))


def test_acme_status_before_the_first_certificate(tmp_path, dns_server):
    now = time.time()
    status = {"last_attempt": now - 60, "last_challenge": "http-01",
              "last_error": "urn:ietf:params:acme:error:connection: <timeout> fetching token",
              "failures": 2, "next_attempt": now + 300,
              "dropped": ["autoconfig.example.test"], "dropped_error": "NXDOMAIN"}
    renewals = []
    panel = make_panel(tmp_path, dns_server, acme=True, status=status,
                       renew_certificates=lambda: renewals.append(1))
    page = text(panel.get("/certificate/"))
    assert "Self-signed until the first certificate is issued" in page
    assert "(http-01)" in page
    error = re.search(r'id="cert-error">(.*?)<', page).group(1)
    assert html.unescape(error) == status["last_error"]
    assert "autoconfig.example.test: their DNS does not point here yet (NXDOMAIN)" in page
    assert time.strftime("%Y-%m-%d %H:%M", time.gmtime(now + 300)) in page
    assert 'id="renew" disabled' not in page
    r = panel.post("/certificate/renew")
    assert "Renewal started; reload this page in a few seconds." in flashes(panel.follow(r))
    assert renewals == [1]


def test_acme_renewal_failing(tmp_path, dns_server):
    now = time.time()
    status = {"last_success": now - 86400, "last_error": "rate limited", "failures": 1}
    panel = make_panel(tmp_path, dns_server, acme=True, status=status)
    page = text(panel.get("/certificate/"))
    assert "Renewal failing" in page and "rate limited" in page
    # The home page says the same.
    assert "Renewal failing" in text(panel.get("/"))


def test_unreadable_status_file_is_no_status(tmp_path, dns_server):
    panel = make_panel(tmp_path, dns_server, acme=True)
    status_file(panel.inst.config).write_text("{not json")
    page = panel.get("/certificate/")
    assert page.status_code == 200
    assert "Self-signed until the first certificate is issued" in text(page)


def test_renew_without_a_running_server(tmp_path, dns_server):
    panel = make_panel(tmp_path, dns_server, acme=True)
    assert 'id="renew" disabled' in text(panel.get("/certificate/"))
    r = panel.post("/certificate/renew")
    assert "The server is not running." in flashes(panel.follow(r))


def test_missing_certificate(tmp_path, dns_server):
    panel = make_panel(tmp_path, dns_server, acme=False)
    (panel.inst.data_dir / "tls" / "cert.pem").unlink()
    for path in ("/certificate/", "/"):
        r = panel.get(path)
        assert r.status_code == 200 and "No readable certificate" in text(r)


# --- DKIM ---


@pytest.fixture
def panel(tmp_path, dns_server):
    return make_panel(tmp_path, dns_server, acme=False)


def test_dkim_records_in_255_byte_strings(panel):
    [key] = dkimkeys.keys_for(panel.inst.config.dkim_dir, "example.test")
    page = text(panel.get("/dkim/"))
    assert key.record_name in page
    block = re.search(r'<pre id="dkim-1-example.test">(.*?)</pre>', page, re.S).group(1)
    strings = re.findall(r'"([^"]*)"', html.unescape(block))
    assert len(strings) >= 2  # an RSA-2048 key does not fit in one
    assert all(len(s.encode()) <= 255 for s in strings)
    assert "".join(strings) == key.txt_value()
    assert strings[0].startswith("v=DKIM1; k=rsa; p=")


def test_dkim_page_with_a_domain_without_key(panel):
    panel.accounts.add_domain("nokey.test")
    page = text(panel.get("/dkim/"))
    assert re.search(r"<h2>nokey.test</h2>\s*<p>No key yet.</p>", page)
