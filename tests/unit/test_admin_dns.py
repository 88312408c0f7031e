"""DNS page: the records each domain needs, a live check against the loopback DNS server, and
the zone-file download."""

from __future__ import annotations

import html
import re

import dns.zone
import pytest

from server import dkimkeys
from tests.support.panel import ADMIN, Panel, text

ZONE = "panel-dns.test"  # a zone of its own: the shared test DNS server is left as it was


@pytest.fixture
def panel(tmp_path, dns_server):
    panel = Panel.create(tmp_path, dns_server)
    panel.login(ADMIN)
    return panel


def rows(page: str) -> list[dict]:
    """The records table as dicts (name, type, value, status, fix)."""
    body = re.search(r'<table id="records">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    out = []
    for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        status = re.search(r'<span class="badge [a-z]+">([a-z]+)</span>', row)
        fix = re.search(r'<div class="hint fix">(.*?)</div>', row, re.S)
        value = re.search(r'<span id="rec-\d+">(.*?)</span>', row, re.S).group(1)
        out.append({"name": html.unescape(cells[0].strip()), "type": cells[1].strip(),
                    "value": html.unescape(value).strip(),
                    "status": status.group(1) if status else None,
                    "fix": html.unescape(fix.group(1)) if fix else ""})
    return out


def by(rows_, name, rtype):
    found = [r for r in rows_ if r["name"] == name and r["type"] == rtype]
    assert len(found) == 1, (name, rtype, [(r["name"], r["type"]) for r in rows_])
    return found[0]


def test_dns_index_lists_domains(panel):
    panel.accounts.add_domain("other.test")
    page = text(panel.get("/dns/"))
    assert 'href="/dns/example.test"' in page and 'href="/dns/other.test"' in page


def test_dns_page_lists_every_kind_of_record(panel):
    page = text(panel.get("/dns/example.test"))
    got = rows(page)
    types = {r["type"] for r in got}
    assert {"MX", "A", "TXT", "CNAME", "SRV", "TLSA"} <= types
    assert by(got, "example.test", "MX")["value"] == "10 mail.example.test."
    assert by(got, "example.test", "TXT")["value"] == '"v=spf1 mx -all"'
    assert by(got, "_dmarc.example.test", "TXT")["value"].startswith('"v=DMARC1; p=quarantine')
    assert by(got, "_submissions._tcp.example.test", "SRV")["value"].startswith("0 1 ")
    assert by(got, "mta-sts.example.test", "CNAME")["value"] == "mail.example.test."
    [key] = dkimkeys.keys_for(panel.inst.config.dkim_dir, "example.test")
    dkim = by(got, key.record_name, "TXT")["value"]
    strings = re.findall(r'"([^"]*)"', dkim)
    assert "".join(strings) == key.txt_value() and all(len(s) <= 255 for s in strings)
    assert all(r["status"] is None for r in got)  # no check asked for


def test_unknown_domain_is_404(panel):
    for path in ("/dns/nowhere.test", "/dns/nowhere.test/zone", "/dns/EXAMPLE.TEST%0d%0a"):
        assert panel.get(path).status_code == 404, path


def test_zone_file_parses(panel):
    r = panel.get("/dns/example.test/zone")
    assert r.status_code == 200
    assert r.headers["Content-Disposition"] == 'attachment; filename="example.test.zone"'
    # Records to paste into the zone at the DNS provider: no SOA of its own.
    zone = dns.zone.from_text(text(r), origin="example.test.", relativize=False,
                              check_origin=False)
    mx = zone.find_rdataset("example.test.", "MX")
    assert [str(rd.exchange) for rd in mx] == ["mail.example.test."]
    txt = [b"".join(rd.strings).decode() for rd in zone.find_rdataset("example.test.", "TXT")]
    assert txt == ["v=spf1 mx -all"]
    [key] = dkimkeys.keys_for(panel.inst.config.dkim_dir, "example.test")
    dkim = zone.find_rdataset(key.record_name + ".", "TXT")
    assert [b"".join(rd.strings).decode() for rd in dkim] == [key.txt_value()]
    assert zone.find_rdataset("_imaps._tcp.example.test.", "SRV")


@pytest.fixture
def published(dns_server):
    """A zone for ZONE on the test DNS server with some records right, one wrong, the rest
    missing; removed afterwards."""
    names = []

    def publish(name, rtype, value):
        names.append(name)
        dns_server.set(name, rtype, value)

    dns_server.add_zone(ZONE)
    names.append(ZONE)
    yield publish
    for name in names:
        dns_server.delete(name)


def test_check_against_dns(panel, published, dns_server):
    r = panel.post("/domains/add", {"domain": ZONE})
    assert r.headers["Location"] == f"/dns/{ZONE}"
    [key] = dkimkeys.keys_for(panel.inst.config.dkim_dir, ZONE)
    published(ZONE, "MX", "10 mail.example.test.")
    published(ZONE, "TXT", "v=spf1 mx -all")
    published(key.record_name, "TXT", key.txt_value())
    published(f"_dmarc.{ZONE}", "TXT", "v=DMARC1; p=none")
    page = text(panel.get(f"/dns/{ZONE}?check=1"))
    got = rows(page)
    assert by(got, ZONE, "MX")["status"] == "ok"
    assert by(got, ZONE, "TXT")["status"] == "ok"
    assert by(got, key.record_name, "TXT")["status"] == "ok"
    assert by(got, "mail.example.test", "A")["status"] in ("ok", "skipped")
    dmarc = by(got, f"_dmarc.{ZONE}", "TXT")
    assert dmarc["status"] == "mismatch" and "v=DMARC1; p=quarantine" in dmarc["fix"]
    assert "found: v=DMARC1; p=none" in html.unescape(page)
    srv = by(got, f"_imaps._tcp.{ZONE}", "SRV")
    assert srv["status"] == "missing" and srv["fix"]
    assert by(got, f"autoconfig.{ZONE}", "CNAME")["status"] == "missing"
    summary = re.search(r'id="check-summary">(.*?)</p>', page, re.S).group(1)
    assert "need attention" in summary
    # The page asked the loopback server, not the system resolver.
    assert (f"_dmarc.{ZONE}.", "TXT") in dns_server.queries


def test_check_when_everything_is_missing(panel, published):
    panel.post("/domains/add", {"domain": ZONE})
    got = rows(text(panel.get(f"/dns/{ZONE}?check=1")))
    assert by(got, ZONE, "MX")["status"] == "missing"
    assert "pointing to mail.example.test" in by(got, ZONE, "MX")["fix"]
