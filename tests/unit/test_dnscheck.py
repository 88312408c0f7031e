"""The live DNS check (server/dnscheck.py) against the loopback test DNS server, through the
resolver the server itself uses (``make_resolver`` with ``[dns] nameservers``)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from server import dkimkeys
from server.config import parse_config
from server.dnscheck import check_records
from server.dnsrecords import expected_records
from server.dnsresolve import make_resolver
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer

D, H = "example.test", "mail.example.test"
SPKI = "5e" * 32


class ValidatingDNSServer(DNSTestServer):
    """Answers as a validating resolver does for a signed zone: AD set when the query asks
    for it (RFC 6840 §5.7). The test server itself signs nothing, so this is the only way to
    see the TLSA verdicts that apply to signed zones."""

    def _answer(self, data: bytes, udp: bool) -> bytes | None:
        out = super()._answer(data, udp)
        if out and len(data) > 3 and data[3] & 0x20:
            out = out[:3] + bytes([out[3] | 0x20]) + out[4:]
        return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    dkimkeys.generate(root / "dkim", D)
    return root


def make_config(data_dir, nameserver: str, hostname: str = H, timeout: float = 2.0):
    text = f"""
[server]
hostname = "{hostname}"
data_dir = "{data_dir}"
public_ipv4 = "127.0.0.1"
[listen]
submissions = "*:465"
imaps = "*:993"
[acme]
enabled = true
[dns]
nameservers = ["{nameserver}"]
timeout = {timeout}
"""
    return parse_config(text, data_dir / "mailstead.toml")


def expected(config):
    return expected_records(config, D, dkim_keys=dkimkeys.keys_for(config.dkim_dir, D),
                            cert_spki_sha256=SPKI)


def publish(server: DNSTestServer, records) -> None:
    for rec in records:
        if rec.value is not None:
            server.set(rec.name, rec.rtype, rec.value)


@pytest.fixture(params=[DNSTestServer, ValidatingDNSServer], ids=["unsigned", "signed"])
def env(request, data_dir):
    with request.param(DEFAULT_ZONE) as server:
        config = make_config(data_dir, server.nameserver)
        records = expected(config)
        publish(server, records)
        yield server, config, records
        assert not server.errors, server.errors


def run(config, records):
    return asyncio.run(check_records(records, make_resolver(config.dns)))


def by_key(checks):
    return {(c.record.name, c.record.rtype, c.record.value.split(";")[0]
             if c.record.value else None): c for c in checks}


def one(checks, name, rtype, prefix=""):
    [check] = [c for c in checks if c.record.name == name and c.record.rtype == rtype
               and (c.record.value or "").startswith(prefix)]
    return check


def test_all_published_all_ok(env):
    server, config, records = env
    checks = run(config, records)
    assert [c.record for c in checks] == records  # same order
    signed = isinstance(server, ValidatingDNSServer)
    for c in checks:
        if c.record.rtype == "TLSA" and not signed:
            assert c.status == "skipped" and "DNSSEC" in c.fix
            assert c.found == [f"3 1 1 {SPKI}"]
        else:
            assert c.status == "ok", (c.record, c.found, c.fix)
            assert c.fix == "" and not c.breaks_mail
    assert one(checks, D, "MX").found == [f"10 {H}."]


def test_missing_records(env):
    server, config, records = env
    server.delete(f"_dmarc.{D}")
    server.delete(f"_submissions._tcp.{D}")
    server.delete(f"autoconfig.{D}")
    server.delete(D, "MX")
    checks = run(config, records)
    dmarc = one(checks, f"_dmarc.{D}", "TXT")
    assert dmarc.status == "missing" and not dmarc.breaks_mail
    assert dmarc.fix == (f"Add a TXT record at _dmarc.{D} with the value "
                         f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{D}")
    srv = one(checks, f"_submissions._tcp.{D}", "SRV")
    assert srv.status == "missing" and f"0 1 465 {H}." in srv.fix
    auto = one(checks, f"autoconfig.{D}", "CNAME")
    assert auto.status == "missing" and auto.fix == (
        f"Add a CNAME record at autoconfig.{D} pointing to {H}.")
    mx = one(checks, D, "MX")
    assert mx.status == "missing" and mx.breaks_mail and H in mx.fix


def test_mx_elsewhere_or_shared(env):
    server, config, records = env
    server.set(D, "MX", "10 mx.other.test.")
    mx = one(run(config, records), D, "MX")
    assert (mx.status, mx.found) == ("mismatch", ["10 mx.other.test."])
    assert mx.fix == f"Your MX points to mx.other.test; change it to {H}."
    server.set(D, "MX", [f"10 {H}.", "20 backup.other.test."])
    mx = one(run(config, records), D, "MX")
    assert mx.status == "mismatch" and "also lists backup.other.test" in mx.fix
    server.set(D, "MX", "0 .")  # RFC 7505 null MX
    mx = one(run(config, records), D, "MX")
    assert mx.status == "mismatch" and "null MX" in mx.fix


def test_duplicate_spf_is_an_error(env):
    server, config, records = env
    server.set(D, "TXT", ["v=spf1 mx -all", "v=spf1 include:_spf.other.test ~all",
                          "google-site-verification=abc"])
    spf = one(run(config, records), D, "TXT", "v=spf1")
    assert spf.status == "error" and spf.breaks_mail
    assert "There are 2 SPF records" in spf.fix and "merge them into one" in spf.fix
    assert len(spf.found) == 3


def test_spf_variants(env):
    server, config, records = env
    # Other TXT records beside SPF, and case/spacing differences, are fine.
    server.set(D, "TXT", ["google-site-verification=abc", "V=SPF1   MX  -all"])
    assert one(run(config, records), D, "TXT", "v=spf1").status == "ok"
    # A different record that still allows us: ok, with a note saying so.
    server.set(D, "TXT", "v=spf1 mx include:_spf.other.test ~all")
    spf = one(run(config, records), D, "TXT", "v=spf1")
    assert spf.status == "ok" and "allows this server" in spf.note
    server.set(D, "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    assert one(run(config, records), D, "TXT", "v=spf1").status == "ok"
    # One that does not: "-mx" forbids, an unrelated network does not include us.
    for value in ("v=spf1 -mx ip4:192.0.2.0/24 -all", "v=spf1 ip4:192.0.2.1 -all"):
        server.set(D, "TXT", value)
        spf = one(run(config, records), D, "TXT", "v=spf1")
        assert spf.status == "mismatch", value
        assert spf.fix == f"Change the SPF record at {D} from {value} to v=spf1 mx -all"
    server.set(D, "TXT", "v=spf10 mx")  # not an SPF record at all
    assert one(run(config, records), D, "TXT", "v=spf1").status == "missing"


def test_dkim_key_compared(env, data_dir):
    server, config, records = env
    [key] = dkimkeys.keys_for(config.dkim_dir, D)
    # Published with different spacing and without v=: the same key is ok.
    p = key.public_key_b64()
    server.set(key.record_name, "TXT", f"k=rsa;  p={p[:100]} {p[100:]}")
    assert one(run(config, records), key.record_name, "TXT").status == "ok"
    server.set(key.record_name, "TXT", "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A")
    dkim = one(run(config, records), key.record_name, "TXT")
    assert dkim.status == "mismatch" and dkim.breaks_mail
    assert dkim.fix.startswith(f"The DKIM record at {key.record_name} has a different key")
    assert key.txt_value() in dkim.fix


def test_mta_sts_id_and_dmarc_mismatch(env):
    server, config, records = env
    server.set(f"_mta-sts.{D}", "TXT", "v=STSv1; id=20240101")
    server.set(f"_dmarc.{D}", "TXT", "v=DMARC1; p=none")
    checks = run(config, records)
    sts = one(checks, f"_mta-sts.{D}", "TXT")
    assert sts.status == "mismatch" and "v=STSv1; id=20240101" in sts.fix
    assert sts.record.value in sts.fix
    assert one(checks, f"_dmarc.{D}", "TXT").status == "mismatch"


def test_srv_port_and_target_matter_priority_does_not(env):
    server, config, records = env
    server.set(f"_imaps._tcp.{D}", "SRV", f"5 3 993 {H.upper()}.")
    server.set(f"_submissions._tcp.{D}", "SRV", f"0 1 587 {H}.")
    checks = run(config, records)
    assert one(checks, f"_imaps._tcp.{D}", "SRV").status == "ok"
    sub = one(checks, f"_submissions._tcp.{D}", "SRV")
    assert sub.status == "mismatch"
    assert sub.fix == f"Change the SRV record at _submissions._tcp.{D} to 0 1 465 {H}."


def test_cname_or_same_address(env):
    server, config, records = env
    server.delete(f"autoconfig.{D}")
    server.set(f"autoconfig.{D}", "A", "127.0.0.1")  # H's address: works like the CNAME
    server.delete(f"autodiscover.{D}")
    server.set(f"autodiscover.{D}", "A", "192.0.2.9")
    server.set(f"mta-sts.{D}", "CNAME", "web.other.test.")
    checks = run(config, records)
    auto = one(checks, f"autoconfig.{D}", "CNAME")
    assert (auto.status, auto.found) == ("ok", ["127.0.0.1"]) and auto.note
    disc = one(checks, f"autodiscover.{D}", "CNAME")
    assert disc.status == "mismatch" and "192.0.2.9" in disc.fix and H in disc.fix
    sts = one(checks, f"mta-sts.{D}", "CNAME")
    assert sts.status == "mismatch"
    assert sts.fix == f"mta-sts.{D} points to web.other.test; change it to {H}."


def test_host_address(env):
    server, config, records = env
    server.set(H, "A", "192.0.2.1")
    a = one(run(config, records), H, "A")
    assert a.status == "mismatch" and a.breaks_mail
    assert a.fix == f"{H} points to 192.0.2.1; change it to 127.0.0.1."
    server.set(H, "A", ["127.0.0.1", "192.0.2.1"])
    a = one(run(config, records), H, "A")
    assert a.status == "mismatch" and "also points to 192.0.2.1" in a.fix


def test_caa(env):
    server, config, records = env
    server.set(D, "CAA", '0 issue "letsencrypt.org; accounturi=https://acme/acct/1"')
    assert one(run(config, records), D, "CAA").status == "ok"
    server.set(D, "CAA", ['0 issue "sectigo.com"', '0 iodef "mailto:sec@example.test"'])
    caa = one(run(config, records), D, "CAA")
    assert caa.status == "mismatch" and "letsencrypt.org" in caa.fix
    server.delete(D, "CAA")
    caa = one(run(config, records), D, "CAA")
    assert caa.status == "missing" and not caa.breaks_mail


def test_tlsa(env):
    server, config, records = env
    signed = isinstance(server, ValidatingDNSServer)
    name = f"_25._tcp.{H}"
    server.set(name, "TLSA", "3 1 1 " + "00" * 32)
    tlsa = one(run(config, records), name, "TLSA")
    if signed:
        # A wrong pin in a signed zone stops DANE senders: worse than no record.
        assert tlsa.status == "mismatch" and tlsa.breaks_mail and SPKI in tlsa.fix
    else:
        assert tlsa.status == "skipped" and not tlsa.breaks_mail
    server.delete(name)
    tlsa = one(run(config, records), name, "TLSA")
    assert tlsa.status == ("missing" if signed else "skipped")
    assert not tlsa.breaks_mail


def test_name_outside_the_served_zones_is_an_error_not_a_crash(data_dir):
    with DNSTestServer(DEFAULT_ZONE) as server:
        # The host's zone is not served: every host lookup is REFUSED.
        config = make_config(data_dir, server.nameserver, hostname="mx.nowhere.test")
        records = expected(config)
        publish(server, [r for r in records if not r.host])
        checks = run(config, records)
    host = [c for c in checks if c.record.host]
    assert host and all(c.status == "error" for c in host)
    assert all("mx.nowhere.test" in c.fix and "Could not check" in c.fix for c in host)
    assert one(checks, D, "MX").status == "ok"


def test_timeout_is_an_error_not_a_verdict(data_dir):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # receives queries, never answers
        config = make_config(data_dir, f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        records = expected(config)
        checks = run(config, records)
    assert {c.status for c in checks} == {"error"}
    assert "timed out" in one(checks, D, "MX").fix
