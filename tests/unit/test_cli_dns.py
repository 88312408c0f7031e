"""``mailstead dns``, run as a subprocess the way an owner runs it, against the loopback test
DNS server that ``init --nameserver`` points the instance at."""

from __future__ import annotations

import dns.zone
import pytest

from server import dkimkeys
from server.config import load_config
from server.dnsrecords import expected_records, served_spki_sha256
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.instance import cli

D, H = "example.test", "mail.example.test"


@pytest.fixture(scope="module")
def dns_server():
    with DNSTestServer(DEFAULT_ZONE) as server:
        yield server
        assert not server.errors, server.errors


@pytest.fixture(scope="module")
def config_path(tmp_path_factory, dns_server):
    data = tmp_path_factory.mktemp("cli-dns") / "data"
    cli("init", "--dev", "--data-dir", str(data), "--domain", D, "--hostname", H,
        "--nameserver", dns_server.nameserver)
    return data / "mailstead.toml"


@pytest.fixture
def records(config_path, dns_server):
    """Every record published as mailstead asks (each test starts from that)."""
    config = load_config(config_path)
    recs = expected_records(config, D, dkim_keys=dkimkeys.keys_for(config.dkim_dir, D),
                            cert_spki_sha256=served_spki_sha256(config))
    for rec in recs:
        if rec.value is not None:
            dns_server.set(rec.name, rec.rtype, rec.value)
    return recs


def test_check_all_ok(config_path, records):
    proc = cli("-c", str(config_path), "dns", "--check", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"DNS records of {D}, as DNS has them now:"
    statuses = [line.split()[0] for line in lines[1:] if not line.startswith("           ")]
    assert len(statuses) == len(records)
    # The test server does not sign its zones, so DANE does not apply.
    assert statuses.count("SKIPPED") == 1 and statuses.count("OK") == len(records) - 1
    assert f"  OK       MX    {D}" in lines


def test_check_fails_when_a_required_record_is_wrong(config_path, records, dns_server):
    dns_server.set(D, "MX", "10 mx.other.test.")
    dns_server.delete(f"_dmarc.{D}")
    proc = cli("-c", str(config_path), "dns", D, "--check", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"  MISMATCH MX    {D}\n           found: 10 mx.other.test.\n" \
           f"           Your MX points to mx.other.test; change it to {H}.\n" in out
    assert f"  MISSING  TXT   _dmarc.{D}\n           Add a TXT record at _dmarc.{D} " in out


def test_check_passes_when_only_a_recommended_record_is_missing(config_path, records,
                                                                dns_server):
    dns_server.delete(f"_dmarc.{D}")
    dns_server.delete(f"autoconfig.{D}")
    proc = cli("-c", str(config_path), "dns", "--check", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("MISSING") == 2


def test_zone(config_path, records):
    proc = cli("-c", str(config_path), "dns", "--zone")
    zone = dns.zone.from_text(proc.stdout, D + ".", relativize=False, check_origin=False)
    names = {n.to_text(omit_final_dot=True) for n in zone.nodes}
    assert names == {r.name for r in records}


def test_table(config_path, records):
    out = cli("-c", str(config_path), "dns").stdout
    assert out.startswith(f"DNS records to publish for {D}:\n")
    for rec in records:
        assert f"  {rec.name:<34} {rec.rtype:<6}{rec.display_value()}\n" in out
        assert rec.purpose in out
    assert "required: Tells other servers to deliver mail" in out
    assert "only if your zone is DNSSEC-signed" in out


def test_unknown_domain_refused(config_path):
    proc = cli("-c", str(config_path), "dns", "other.test", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "other.test is not one of your domains" in proc.stderr


def test_every_domain_when_none_given(config_path):
    cli("-c", str(config_path), "domain", "add", "second.test")
    try:
        out = cli("-c", str(config_path), "dns").stdout
    finally:
        cli("-c", str(config_path), "domain", "delete", "second.test")
    assert f"DNS records to publish for {D}:" in out
    assert "DNS records to publish for second.test:" in out
    assert f"  second.test                        MX    10 {H}." in out
