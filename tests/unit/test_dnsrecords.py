"""The records a domain must publish (server/dnsrecords.py): values, flags, the MTA-STS id, CAA
and TLSA logic, and the zone file, which dnspython's zone parser must read back whole."""

from __future__ import annotations

import hashlib
import re

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization

from server import dkimkeys
from server.config import parse_config
from server.dnsrecords import (
    Record,
    expected_records,
    mta_sts_id,
    served_spki_sha256,
    spki_sha256,
    zone_file,
)
from server.tlscert import make_self_signed

D, H = "example.test", "mail.example.test"
ALL_LISTENERS = """\
[listen]
mx = "*:25"
submission = "*:587"
submissions = "*:465"
imap = "*:143"
imaps = "*:993"
pop3 = "*:110"
pop3s = "*:995"
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data dir with RSA and Ed25519 keys and a self-signed certificate, made once."""
    root = tmp_path_factory.mktemp("data")
    dkimkeys.generate(root / "dkim", D, ed25519=True)
    make_self_signed(H, root / "tls" / "cert.pem", root / "tls" / "key.pem")
    return root


@pytest.fixture
def make_config(data_dir):
    def make(extra: str = "", hostname: str = H, listen: str = ALL_LISTENERS):
        text = (f'[server]\nhostname = "{hostname}"\ndata_dir = "{data_dir}"\n{extra}\n'
                f"{listen}")
        # Sections named twice would be invalid TOML: extra may only add [server] keys first.
        return parse_config(text, data_dir / "mailstead.toml")
    return make


def records(config, domain=D, spki=None):
    return expected_records(config, domain, dkim_keys=dkimkeys.keys_for(config.dkim_dir, domain),
                            cert_spki_sha256=spki)


def by_key(recs):
    return {(r.name, r.rtype): r for r in recs if r.rtype not in ("TXT", "SRV")}


def txt(recs, name):
    return [r for r in recs if r.name == name and r.rtype == "TXT"]


def test_domain_records(make_config):
    recs = records(make_config('public_ipv4 = "192.0.2.7"'))
    got = {(r.name, r.rtype, r.value) for r in recs}
    for want in [
        (D, "MX", f"10 {H}."),
        (H, "A", "192.0.2.7"),
        (D, "TXT", "v=spf1 mx -all"),
        (H, "TXT", "v=spf1 a -all"),
        (f"_dmarc.{D}", "TXT", f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{D}"),
        (f"mta-sts.{D}", "CNAME", f"{H}."),
        (f"_smtp._tls.{D}", "TXT", f"v=TLSRPTv1; rua=mailto:postmaster@{D}"),
        (f"autoconfig.{D}", "CNAME", f"{H}."),
        (f"autodiscover.{D}", "CNAME", f"{H}."),
        (f"_submissions._tcp.{D}", "SRV", f"0 1 465 {H}."),
        (f"_submission._tcp.{D}", "SRV", f"10 1 587 {H}."),
        (f"_imaps._tcp.{D}", "SRV", f"0 1 993 {H}."),
        (f"_imap._tcp.{D}", "SRV", f"10 1 143 {H}."),
        (f"_pop3s._tcp.{D}", "SRV", f"10 1 995 {H}."),
        (f"_pop3._tcp.{D}", "SRV", f"20 1 110 {H}."),
    ]:
        assert want in got
    assert not any(r.rtype == "AAAA" for r in recs)
    assert not any(r.rtype == "CAA" for r in recs)  # ACME off: the CA is the owner's business
    for r in recs:
        assert not r.name.endswith(".") and r.name == r.name.lower()
        assert r.purpose and r.purpose.endswith(".")
    required = {(r.name, r.rtype) for r in recs if r.required}
    assert {(D, "MX"), (H, "A"), (D, "TXT")} <= required
    assert (f"_dmarc.{D}", "TXT") not in required
    assert "quarantine" in txt(recs, f"_dmarc.{D}")[0].purpose


def test_host_records_are_marked(make_config):
    recs = records(make_config('public_ipv4 = "192.0.2.7"\npublic_ipv6 = "2001:db8::7"'),
                   spki="ab" * 32)
    host = {(r.name, r.rtype) for r in recs if r.host}
    assert host == {(H, "A"), (H, "AAAA"), (H, "TXT"), (f"_25._tcp.{H}", "TLSA")}
    assert by_key(recs)[(H, "AAAA")].value == "2001:db8::7"


def test_unknown_ipv4_still_listed(make_config):
    a = by_key(records(make_config()))[(H, "A")]
    assert a.value is None and a.required
    assert "IPv4" in a.display_value()


def test_host_equal_to_domain_has_one_spf_record(make_config):
    recs = records(make_config(hostname=D))
    assert [r.value for r in txt(recs, D) if r.value.startswith("v=spf1")] == ["v=spf1 mx -all"]


def test_dkim_records_split_in_255_byte_strings(make_config):
    config = make_config()
    recs = records(config)
    keys = dkimkeys.keys_for(config.dkim_dir, D)
    assert {k.algorithm for k in keys} == {"rsa", "ed25519"}
    for key in keys:
        [rec] = txt(recs, key.record_name)
        assert rec.value == key.txt_value() and rec.required
        strings = rec.txt_strings()
        assert "".join(strings) == rec.value
        assert all(len(s.encode()) <= 255 for s in strings)
        assert len(strings) == (2 if key.algorithm == "rsa" else 1)  # RSA-2048: ~410 bytes


def test_txt_strings_boundaries():
    assert Record("x.test", "TXT", "a" * 255, "p.", True).txt_strings() == ["a" * 255]
    assert [len(s) for s in Record("x.test", "TXT", "a" * 600, "p.", True).txt_strings()] == \
        [255, 255, 90]


def test_srv_for_a_service_that_is_off(make_config):
    recs = records(make_config(listen='[listen]\nsubmissions = "*:465"\nimaps = "*:10993"\n'))
    srv = {r.name: r.value for r in recs if r.rtype == "SRV"}
    assert srv[f"_imaps._tcp.{D}"] == f"0 1 10993 {H}."  # the configured port, not 993
    for off in ("_submission", "_imap", "_pop3s", "_pop3"):
        assert srv[f"{off}._tcp.{D}"] == "0 0 0 ."  # RFC 6186 §4: not offered


@pytest.mark.parametrize("acme", ["enabled = true",
                                  "enabled = true\nstaging = true",
                                  'enabled = true\ndirectory = '
                                  '"https://acme-staging-v02.api.letsencrypt.org/directory"'])
def test_caa_for_lets_encrypt(make_config, acme):
    config = make_config(listen=f"[acme]\n{acme}\n")
    [caa] = [r for r in records(config) if r.rtype == "CAA"]
    assert (caa.name, caa.value) == (D, '0 issue "letsencrypt.org"')


def test_caa_for_another_ca_is_a_marked_placeholder(make_config):
    config = make_config(listen='[acme]\nenabled = true\ndirectory = "https://ca.example/dir"\n')
    recs = records(config)
    [caa] = [r for r in recs if r.rtype == "CAA"]
    assert caa.value is None and not caa.required
    assert "https://ca.example/dir" in caa.purpose
    # Never published as if real: the zone file has it as a comment only.
    caa_lines = [line for line in zone_file(recs, D).splitlines() if " CAA " in line]
    assert caa_lines and all(line.startswith(";") for line in caa_lines)


def test_mta_sts_id_changes_with_the_policy_only(make_config):
    base = mta_sts_id(make_config())
    assert re.fullmatch(r"[0-9a-f]{32}", base)  # RFC 8461 §3.1: 1-32 alphanumerics
    assert mta_sts_id(make_config()) == base
    assert mta_sts_id(make_config('public_ipv4 = "192.0.2.7"', listen="")) == base
    changed = {
        mta_sts_id(make_config(listen='[web]\nmta_sts_mode = "enforce"\n')),
        mta_sts_id(make_config(listen='[web]\nmta_sts_mode = "none"\n')),
        mta_sts_id(make_config(listen="[web]\nmta_sts_max_age = 86400\n")),
        mta_sts_id(make_config(hostname="mx.example.test")),  # the policy's mx line
    }
    assert base not in changed and len(changed) == 4
    [rec] = txt(records(make_config(listen='[web]\nmta_sts_mode = "enforce"\n')),
                f"_mta-sts.{D}")
    assert rec.value == "v=STSv1; id=" + mta_sts_id(
        make_config(listen='[web]\nmta_sts_mode = "enforce"\n'))


def _key_spki_sha256(key_file) -> str:
    """Independently of the certificate: the hash of the key pair's public half."""
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def test_spki_sha256(data_dir):
    cert, key = data_dir / "tls" / "cert.pem", data_dir / "tls" / "key.pem"
    want = _key_spki_sha256(key)
    assert spki_sha256(cert.read_bytes()) == want
    # The ACME file holds the key first, then the leaf, then the chain.
    other = data_dir / "other"
    make_self_signed("ca.example.test", other / "cert.pem", other / "key.pem")
    combined = key.read_bytes() + cert.read_bytes() + (other / "cert.pem").read_bytes()
    assert spki_sha256(combined) == want


def test_tlsa_from_the_served_certificate(make_config, data_dir):
    config = make_config()  # ACME off: the [tls] certificate is the one served for good
    spki = served_spki_sha256(config)
    assert spki == _key_spki_sha256(data_dir / "tls" / "key.pem")
    tlsa = by_key(records(config, spki=spki))[(f"_25._tcp.{H}", "TLSA")]
    assert tlsa.value == f"3 1 1 {spki}"
    assert tlsa.condition == "only if your zone is DNSSEC-signed" and not tlsa.required


def test_tlsa_waits_for_the_acme_certificate(make_config, data_dir):
    config = make_config(listen="[acme]\nenabled = true\n")
    # The self-signed key is replaced at the first issuance: pinning it would break DANE.
    assert served_spki_sha256(config) is None
    tlsa = by_key(records(config))[(f"_25._tcp.{H}", "TLSA")]
    assert tlsa.value is None and "once the certificate" in tlsa.condition
    acme = data_dir / "tls" / "acme.pem"
    acme.write_bytes((data_dir / "tls" / "key.pem").read_bytes()
                     + (data_dir / "tls" / "cert.pem").read_bytes())
    try:
        assert served_spki_sha256(config) == _key_spki_sha256(data_dir / "tls" / "key.pem")
        no_reuse = make_config(listen="[acme]\nenabled = true\nreuse_key = false\n")
        assert served_spki_sha256(no_reuse) is None
        tlsa = by_key(records(no_reuse))[(f"_25._tcp.{H}", "TLSA")]
        assert "reuse_key" in tlsa.condition
    finally:
        acme.unlink()


def _parse_zone(text: str, origin: str) -> dns.zone.Zone:
    # A fragment: no SOA/NS of its own, which check_origin would demand.
    return dns.zone.from_text(text, origin + ".", relativize=False, check_origin=False)


def test_zone_file_holds_every_record(make_config, data_dir):
    config = make_config('public_ipv4 = "192.0.2.7"\npublic_ipv6 = "2001:db8::7"',
                         listen=ALL_LISTENERS + "[acme]\nenabled = true\n")
    recs = records(config, spki="0f" * 32)
    text = zone_file(recs, D)
    assert text.startswith("; ") and f"$ORIGIN {D}." in text and "$TTL 3600" in text
    zone = _parse_zone(text, D)
    published = sum(len(rds) for _, rds in zone.iterate_rdatasets())
    assert published == len(recs)
    for rec in recs:
        rds = zone.get_rdataset(rec.name + ".", rec.rtype)
        assert rds is not None and rds.ttl == 3600, rec
        want = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rec.rtype),
                                   rec.rdata_text(), relativize=False)
        assert want in rds, rec
        if rec.rtype == "TXT":
            [got] = [rd for rd in rds if b"".join(rd.strings).decode() == rec.value]
            assert [s.decode() for s in got.strings] == rec.txt_strings()
    # Names under the origin are written relative to it.
    assert re.search(r"^_dmarc\s+IN TXT", text, re.M)
    assert re.search(r"^@\s+IN MX\s+10 mail\.example\.test\.$", text, re.M)


def test_zone_file_comments_out_what_is_not_in_the_zone(make_config):
    # The host in another zone: its records go in that zone, the unknown A is for the owner.
    config = make_config(hostname="mx.hosting.test")
    recs = records(config, spki="0f" * 32)
    text = zone_file(recs, D)
    zone = _parse_zone(text, D)
    assert zone.get_node("mx.hosting.test.") is None
    for line in text.splitlines():
        if "mx.hosting.test " in line or "mx.hosting.test. " in line.split(" IN ")[0]:
            assert line.startswith(";"), line
    assert "; mx.hosting.test." in text and "TLSA" in text
    assert "your server's public IPv4 address" in text
    published = sum(len(rds) for _, rds in zone.iterate_rdatasets())
    assert published == len([r for r in recs if not r.host])


def test_quotes_in_txt_are_escaped():
    rec = Record(f"x.{D}", "TXT", 'say "hi" \\ bye', "p.", False)
    zone = _parse_zone(zone_file([rec], D), D)
    [rd] = zone.get_rdataset(f"x.{D}.", "TXT")
    assert rd.strings == (b'say "hi" \\ bye',)
