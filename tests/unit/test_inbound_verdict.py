"""The whole verdict (server/inbound/verdict.py): SPF, DKIM, DMARC and ARC together against
records on the loopback DNS server, the Authentication-Results field that says why, and the
action the MX takes: accept, junk, reject, or tempfail when DNS gave no answer."""

from __future__ import annotations

import re

import pytest

from server.dnsresolve import make_resolver
from server.inbound.verdict import evaluate
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.instance import free_port
from tests.support.mailauth import MESSAGE, make_config, message, publish_key, run, sign

ZONES = {
    # domain: (SPF, DMARC)
    "sender.test": ("v=spf1 ip4:127.0.0.1 -all", "v=DMARC1; p=reject; sp=quarantine"),
    "quarantine.test": ("v=spf1 ip4:127.0.0.1 -all", "v=DMARC1; p=quarantine"),
    "monitor.test": ("v=spf1 ip4:127.0.0.1 -all", "v=DMARC1; p=none"),
    "half.test": ("v=spf1 ip4:127.0.0.1 -all", "v=DMARC1; p=reject; pct=50"),
    "nopolicy.test": ("v=spf1 ip4:127.0.0.1 -all", None),
    "sender.co.uk": ("v=spf1 ip4:127.0.0.1 -all", "v=DMARC1; p=reject"),
    "flaky.test": ("v=spf1 include:elsewhere.invalid -all", "v=DMARC1; p=reject"),
}


@pytest.fixture(scope="module")
def dns():
    with DNSTestServer(DEFAULT_ZONE) as server:
        for domain, (spf, policy) in ZONES.items():
            server.add_zone(domain)
            server.set(domain, "TXT", spf)
            if policy:
                server.set(f"_dmarc.{domain}", "TXT", policy)
            publish_key(server, domain, "sel")
        publish_key(server, "sender.test", "ed", algorithm="ed25519")
        server.set("mx.sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        server.set("mail.sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        yield server


def verdict(dns_server, msg, *, ip="127.0.0.1", mail_from="bounces@sender.test",
            helo="client.remote.test", roll=0, nameserver=None, **inbound):
    config = make_config(nameserver or dns_server.nameserver, **inbound)
    return run(evaluate, msg, ip=ip, helo=helo, mail_from=mail_from, config=config,
               resolver=make_resolver(config.dns), roll=roll)


def lines(header: bytes) -> list[str]:
    text = header.decode()
    assert text.endswith("\r\n")
    return [part.strip() for part in text[:-2].split(";\r\n\t")]


def test_signed_message_passes_and_the_header_says_so(dns):
    v = verdict(dns, sign(MESSAGE, "sender.test"))
    assert (v.action, v.reason) == ("accept", "")
    head, spf, dkim, dmarc, arc = lines(v.header)
    assert head == "Authentication-Results: mail.example.test"
    assert spf == "spf=pass smtp.mailfrom=sender.test"
    assert re.fullmatch(r"dkim=pass header\.d=sender\.test header\.s=sel header\.a=rsa-sha256 "
                        # "+" is a token character (RFC 2045), "/" is not: only "/" needs quotes
                        r'header\.b=("[A-Za-z0-9+/=]{8}"|[A-Za-z0-9+]{8})', dkim), dkim
    assert dmarc == ("dmarc=pass (p=reject sp=quarantine pct=100 dis=none) "
                     "header.from=sender.test")
    assert arc == "arc=none"


def test_ed25519_signature_is_enough_for_dmarc(dns):
    v = verdict(dns, sign(MESSAGE, "sender.test", "ed", algorithm="ed25519"), ip="192.0.2.1")
    assert v.action == "accept"
    assert "dkim=pass header.d=sender.test header.s=ed header.a=ed25519-sha256" \
        in v.header.decode()


def test_forged_from_of_a_reject_domain_is_refused(dns):
    v = verdict(dns, message("ceo@sender.test"), ip="192.0.2.66", mail_from="x@nopolicy.test")
    assert v.action == "reject" and v.policy_domain == "sender.test"
    assert v.reason == ("DMARC policy of sender.test is reject: SPF fail for nopolicy.test; "
                        "no DKIM signature")
    text = v.header.decode()
    assert "spf=fail" in text and "dkim=none" in text
    assert ("dmarc=fail (p=reject sp=quarantine pct=100 dis=reject) reason=\"SPF fail for "
            "nopolicy.test; no DKIM signature\" header.from=sender.test") in text


def test_reject_can_be_filed_into_junk(dns):
    v = verdict(dns, message("ceo@sender.test"), ip="192.0.2.66", dmarc_reject="junk")
    assert v.action == "junk"


def test_tampered_message_fails_dkim_and_dmarc(dns):
    msg = sign(MESSAGE, "sender.test").replace(b"numbers are", b"numbers were")
    v = verdict(dns, msg, ip="192.0.2.66")
    assert v.action == "reject"
    assert 'dkim=fail reason="body hash did not verify"' in v.header.decode()


def test_quarantine_goes_to_junk(dns):
    v = verdict(dns, message("a@quarantine.test"), ip="192.0.2.66",
                mail_from="a@quarantine.test")
    assert v.action == "junk"
    assert "DMARC policy of quarantine.test is quarantine" in v.reason


def test_subdomain_gets_the_sp_policy(dns):
    v = verdict(dns, message("a@news.sender.test"), ip="192.0.2.66")
    assert v.action == "junk"
    assert "dis=quarantine" in v.header.decode()


def test_relaxed_alignment_of_a_subdomain(dns):
    """SPF for bounces@mail.sender.test aligns with From: sender.test (same org domain)."""
    v = verdict(dns, message("a@sender.test"), mail_from="b@mail.sender.test")
    assert v.action == "accept" and "dmarc=pass" in v.header.decode()


def test_public_suffix_organisational_domain(dns):
    """d=sender.co.uk aligns with From: mail.sender.co.uk; the PSL knows co.uk."""
    msg = sign(message("a@mail.sender.co.uk"), "sender.co.uk")
    v = verdict(dns, msg, ip="192.0.2.66", mail_from="x@nopolicy.test")
    assert v.action == "accept" and "dmarc=pass" in v.header.decode()


def test_monitoring_policy_accepts_failures(dns):
    v = verdict(dns, message("a@monitor.test"), ip="192.0.2.66")
    assert v.action == "accept"
    assert "dmarc=fail (p=none sp=none pct=100 dis=none)" in v.header.decode()


@pytest.mark.parametrize(("roll", "action"), [(0, "reject"), (49, "reject"), (50, "junk")])
def test_pct(dns, roll, action):
    v = verdict(dns, message("a@half.test"), ip="192.0.2.66", roll=roll)
    assert v.action == action


def test_no_policy_accepts(dns):
    v = verdict(dns, message("a@nopolicy.test"), ip="192.0.2.66")
    assert v.action == "accept" and "dmarc=none header.from=nopolicy.test" in v.header.decode()


def test_null_sender_aligns_through_helo(dns):
    """RFC 7208 §2.4: with MAIL FROM:<> the SPF identity is the HELO name."""
    v = verdict(dns, message("a@sender.test"), mail_from="", helo="mx.sender.test")
    text = v.header.decode()
    assert v.action == "accept" and "spf=pass smtp.helo=mx.sender.test" in text
    assert "smtp.mailfrom" not in text and "dmarc=pass" in text


def test_policy_lookup_failure_is_tempfail(dns):
    v = verdict(dns, message("a@elsewhere.invalid"), mail_from="a@elsewhere.invalid")
    assert v.action == "tempfail" and "REFUSED" in v.reason
    assert "dmarc=temperror" in v.header.decode() and "=fail" not in v.header.decode()


def test_spf_temperror_under_reject_is_tempfail_not_fail(dns):
    v = verdict(dns, message("a@flaky.test"), mail_from="a@flaky.test")
    text = v.header.decode()
    assert v.action == "tempfail"
    assert "spf=temperror" in text and "dmarc=temperror" in text and "=fail" not in text


def test_dns_server_down_is_tempfail_never_a_verdict(dns):
    v = verdict(dns, message("ceo@sender.test"), ip="192.0.2.66",
                nameserver=f"127.0.0.1:{free_port()}")
    assert v.action == "tempfail"
    assert "=fail" not in v.header.decode() and "=pass" not in v.header.decode()


def test_missing_from_is_permerror_and_accepted(dns):
    v = verdict(dns, b"Subject: no from\r\n\r\nbody\r\n")
    assert v.action == "accept"
    assert 'dmarc=permerror reason="no From field"' in v.header.decode()


def test_every_from_domain_is_evaluated(dns):
    """RFC 7489 §6.6.1: a second author domain cannot hide a failing one."""
    msg = sign(b"From: a@nopolicy.test, ceo@sender.test\r\n" + MESSAGE.split(b"\r\n", 1)[1],
               "nopolicy.test")
    v = verdict(dns, msg, ip="192.0.2.66")
    assert v.action == "reject" and v.policy_domain == "sender.test"


def test_methods_can_be_switched_off(dns):
    v = verdict(dns, message("ceo@sender.test"), ip="192.0.2.66", dmarc=False, arc=False)
    assert v.action == "accept"
    assert [line.split("=")[0] for line in lines(v.header)[1:]] == ["spf", "dkim"]
    v = verdict(dns, message("ceo@sender.test"), ip="192.0.2.66", spf=False, dkim=False,
                arc=False)
    assert v.action == "reject"  # DMARC still looks at SPF and DKIM itself
    assert [line.split("=")[0] for line in lines(v.header)[1:]] == ["dmarc"]
