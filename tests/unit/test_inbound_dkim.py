"""DKIM verification (server/inbound/dkimcheck.py): messages signed by dkimpy with test keys
published on the loopback DNS server pass (RSA and Ed25519); tampering, missing or broken
keys and unanswered lookups each give their own result."""

from __future__ import annotations

import pytest

from server.config import DNSSection
from server.dnsresolve import make_resolver
from server.inbound import dkimcheck
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.mailauth import MESSAGE, publish_key, run, sign


@pytest.fixture(scope="module")
def dns():
    with DNSTestServer(DEFAULT_ZONE) as server:
        server.add_zone("sender.test")
        publish_key(server, "sender.test", "rsa")
        publish_key(server, "sender.test", "ed", algorithm="ed25519")
        publish_key(server, "sender.test", "sha1")
        server.set("broken._domainkey.sender.test", "TXT", "v=DKIM1; k=rsa; p=bm90IGEga2V5")
        server.set("revoked._domainkey.sender.test", "TXT", "v=DKIM1; k=rsa; p=")
        publish_key(server, "sender.test", "edkey", algorithm="ed25519")
        yield server


def check(dns_server, message):
    resolver = make_resolver(DNSSection(nameservers=(dns_server.nameserver,), timeout=2.0))
    return run(dkimcheck.check, message, resolver)


def only(results):
    [sig] = results
    return sig


def test_rsa_signature_passes(dns):
    sig = only(check(dns, sign(MESSAGE, "sender.test", "rsa")))
    assert (sig.result, sig.domain, sig.selector, sig.algorithm) == (
        "pass", "sender.test", "rsa", "rsa-sha256")
    assert len(sig.b) == 8 and sig.reason == ""


def test_ed25519_signature_passes(dns):
    """RFC 8463."""
    sig = only(check(dns, sign(MESSAGE, "sender.test", "ed", algorithm="ed25519")))
    assert (sig.result, sig.algorithm) == ("pass", "ed25519-sha256")


def test_every_signature_is_checked_top_first(dns):
    msg = sign(sign(MESSAGE, "sender.test", "rsa"), "sender.test", "ed", algorithm="ed25519")
    assert [(s.selector, s.result) for s in check(dns, msg)] == [("ed", "pass"), ("rsa", "pass")]


def test_tampered_body_fails(dns):
    msg = sign(MESSAGE, "sender.test", "rsa").replace(b"numbers are", b"numbers were")
    sig = only(check(dns, msg))
    assert (sig.result, sig.reason) == ("fail", "body hash did not verify")


def test_tampered_signed_header_fails(dns):
    msg = sign(MESSAGE, "sender.test", "ed", algorithm="ed25519")
    msg = msg.replace(b"Subject: quarterly numbers", b"Subject: quarterly Numbers")
    sig = only(check(dns, msg))
    assert (sig.result, sig.reason) == ("fail", "signature did not verify")


def test_added_from_field_fails(dns):
    """A second From above the signed one (what a replayer would add) breaks the signature:
    dkimpy signs every From instance."""
    msg = b"From: ceo@sender.test\r\n" + sign(MESSAGE, "sender.test", "rsa")
    assert only(check(dns, msg)).result == "fail"


def test_unsigned_field_added_later_still_passes(dns):
    msg = b"X-Spam-Score: 0\r\n" + sign(MESSAGE, "sender.test", "rsa")
    assert only(check(dns, msg)).result == "pass"


def test_no_signature_is_none(dns):
    assert check(dns, MESSAGE) == []


@pytest.mark.parametrize(("selector", "result", "reason"), [
    ("missing", "permerror", "no key at missing._domainkey.sender.test"),
    ("broken", "permerror", "unusable key record"),
    ("revoked", "permerror", "unusable key record"),  # RFC 6376 §3.6.1: empty p= = revoked
    ("edkey", "permerror", "a=rsa-sha256 but the key is k=ed25519"),
])
def test_key_problems(dns, selector, result, reason):
    sig = only(check(dns, sign(MESSAGE, "sender.test", selector)))
    assert sig.result == result and sig.reason.startswith(reason)


def test_rsa_sha1_is_not_trusted(dns):
    """RFC 8301 §3.1: rsa-sha1 signatures must not be considered valid."""
    msg = sign(MESSAGE, "sender.test", "sha1", algorithm=b"rsa-sha1")
    sig = only(check(dns, msg))
    assert (sig.result, sig.algorithm) == ("policy", "rsa-sha1")


def test_unreachable_key_is_temperror(dns):
    """A d= in no zone of the test server: REFUSED, so temperror, not fail or permerror."""
    sig = only(check(dns, sign(MESSAGE, "elsewhere.invalid", "rsa")))
    assert sig.result == "temperror" and "REFUSED" in sig.reason


def test_malformed_signature_is_permerror(dns):
    msg = b"DKIM-Signature: v=1; a=rsa-sha256; b=abc\r\n" + MESSAGE
    sig = only(check(dns, msg))
    assert sig.result == "permerror"


def test_too_many_signatures_are_cut(dns):
    msg = MESSAGE
    for _ in range(dkimcheck.MAX_SIGNATURES + 2):
        msg = sign(msg, "sender.test", "rsa")
    results = check(dns, msg)
    assert len(results) == dkimcheck.MAX_SIGNATURES
