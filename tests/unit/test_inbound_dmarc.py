"""DMARC (server/inbound/dmarc.py, RFC 7489): records, Organizational Domains from the Public
Suffix List, alignment, policy discovery on the loopback DNS server and the disposition."""

from __future__ import annotations

import asyncio

import pytest

from server.config import DNSSection
from server.dnsresolve import make_resolver
from server.inbound import dmarc
from server.inbound.dkimcheck import Signature
from server.inbound.dmarc import Policy, Record
from server.inbound.spf import SPFResult
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer

# --- records (RFC 7489 §6.3, §6.4) ---


@pytest.mark.parametrize(("text", "record"), [
    (b"v=DMARC1; p=reject", Record("reject")),
    (b"v=DMARC1;p=quarantine;sp=none;pct=20;adkim=s;aspf=s", Record("quarantine", "none",
                                                                    "s", "s", 20)),
    (b"v = DMARC1 ; P=Reject ; rua=mailto:d@x.test", Record("reject")),
    (b"v=DMARC1; p=none; pct=250", Record("none", pct=100)),
    (b"v=DMARC1; p=none; pct=abc; adkim=x", Record("none")),
    (b"v=DMARC1; p=reject; future=tag", Record("reject")),
    # §6.6.3: no valid p= but a rua=: as if p=none.
    (b"v=DMARC1; rua=mailto:d@x.test", Record("none")),
    (b"v=DMARC1; p=bogus; rua=mailto:d@x.test", Record("none")),
])
def test_parse_record(text, record):
    assert dmarc.parse_record(text) == record


@pytest.mark.parametrize("text", [
    b"v=DMARC1", b"v=DMARC1; p=bogus", b"v=DMARC1; p=reject; sp=bogus", b"p=reject; v=DMARC1",
    b"v=spf1 -all", b"v=dmarc1; p=reject",
])
def test_unusable_records(text):
    with pytest.raises(dmarc.RecordError):
        dmarc.parse_record(text)


# --- Organizational Domain and alignment (§3.1, §3.2) ---


@pytest.mark.parametrize(("domain", "org"), [
    ("sender.test", "sender.test"),
    ("mail.sender.test", "sender.test"),
    ("a.b.mail.sender.test", "sender.test"),
    ("mail.sender.co.uk", "sender.co.uk"),
    ("sender.co.uk", "sender.co.uk"),
    ("co.uk", "co.uk"),  # a public suffix is its own
    ("Mail.Example.COM.", "example.com"),
])
def test_org_domain(domain, org):
    assert dmarc.org_domain(domain) == org


@pytest.mark.parametrize(("identifier", "from_domain", "mode", "result"), [
    ("sender.test", "sender.test", "s", True),
    ("mail.sender.test", "sender.test", "r", True),
    ("mail.sender.test", "sender.test", "s", False),
    ("sender.test", "news.sender.test", "r", True),
    ("other.test", "sender.test", "r", False),
    ("a.co.uk", "b.co.uk", "r", False),  # same public suffix is not the same organisation
    ("mail.sender.co.uk", "sender.co.uk", "r", True),
    ("co.uk", "co.uk", "r", True),
    ("", "sender.test", "r", False),
])
def test_aligned(identifier, from_domain, mode, result):
    assert dmarc.aligned(identifier, from_domain, mode) is result


def test_from_domains():
    assert dmarc.from_domains([["Sender.Test"], ["sender.test", "other.test"]]) == (
        ["sender.test", "other.test"], "")
    assert dmarc.from_domains([]) == ([], "no From field")
    assert dmarc.from_domains([[""]]) == ([], "no domain in From")
    assert dmarc.from_domains([["bücher.test"]]) == (["xn--bcher-kva.test"], "")


# --- evaluation (§6.6.2, §6.6.4) ---

REJECT = Record("reject", "quarantine")


def spf_(domain, result="pass"):
    return SPFResult("mailfrom", domain, result, "")


def sig(domain, result="pass"):
    return Signature(result, domain, "s", "rsa-sha256", "AbCdEfGh", "")


def ev(policy, spf=None, sigs=(), roll=0):
    return dmarc.evaluate(policy, spf, list(sigs), roll)


def test_pass_by_aligned_dkim():
    r = ev(Policy("sender.test", REJECT, "sender.test"), spf_("bounce.other.test"),
           [sig("mail.sender.test")])
    assert (r.result, r.disposition) == ("pass", "none")


def test_pass_by_aligned_spf():
    r = ev(Policy("sender.test", REJECT, "sender.test"), spf_("bounces.sender.test"))
    assert r.result == "pass"


def test_strict_alignment():
    strict = Record("reject", adkim="s", aspf="s")
    r = ev(Policy("sender.test", strict, "sender.test"), spf_("bounces.sender.test"),
           [sig("mail.sender.test")])
    assert (r.result, r.disposition) == ("fail", "reject")


def test_fail_with_reasons():
    r = ev(Policy("sender.test", REJECT, "sender.test"), spf_("evil.test"), [sig("evil.test")])
    assert (r.result, r.requested, r.disposition) == ("fail", "reject", "reject")
    assert r.reason == ("SPF passed for evil.test, not aligned with sender.test; "
                        "DKIM passed for evil.test, not aligned")
    assert r.comment() == "p=reject sp=quarantine pct=100 dis=reject"


def test_subdomain_gets_sp():
    """A record found at the Organizational Domain applies sp= to a subdomain (§6.3)."""
    r = ev(Policy("news.sender.test", REJECT, "sender.test"), spf_("evil.test", "fail"))
    assert (r.requested, r.disposition) == ("quarantine", "quarantine")
    no_sp = Record("reject")
    r = ev(Policy("news.sender.test", no_sp, "sender.test"), spf_("evil.test", "fail"))
    assert r.disposition == "reject"


@pytest.mark.parametrize(("pct", "roll", "disposition"), [
    (100, 99, "reject"), (50, 49, "reject"), (50, 50, "quarantine"), (0, 0, "quarantine"),
])
def test_pct_sampling(pct, roll, disposition):
    """§6.6.4: a message not sampled gets the next policy down (reject -> quarantine)."""
    r = ev(Policy("sender.test", Record("reject", pct=pct), "sender.test"), roll=roll)
    assert (r.result, r.disposition) == ("fail", disposition)


def test_quarantine_not_sampled_is_none():
    r = ev(Policy("sender.test", Record("quarantine", pct=10), "sender.test"), roll=10)
    assert (r.result, r.disposition) == ("fail", "none")


def test_temperror_of_an_aligned_identifier_is_never_a_fail():
    policy = Policy("sender.test", REJECT, "sender.test")
    r = ev(policy, spf_("sender.test", "temperror"))
    assert (r.result, r.disposition) == ("temperror", "none")
    r = ev(policy, spf_("evil.test", "fail"), [sig("sender.test", "temperror")])
    assert r.result == "temperror"
    # An identifier that could not align anyway changes nothing.
    r = ev(policy, spf_("evil.test", "temperror"), [sig("evil.test", "temperror")])
    assert r.result == "fail"


def test_no_record_none_and_errors():
    assert ev(Policy("sender.test")).result == "none"
    assert ev(Policy("sender.test", error="several DMARC records")).result == "permerror"
    assert ev(Policy("sender.test", temporary="timed out")).result == "temperror"


# --- discovery (§6.6.3) against the test DNS server ---

@pytest.fixture(scope="module")
def dns():
    with DNSTestServer(DEFAULT_ZONE) as server:
        for zone in ("sender.test", "sender.co.uk", "plain.test", "two.test", "bad.test",
                     "co.uk"):
            server.add_zone(zone)
        server.set("_dmarc.sender.test", "TXT", "v=DMARC1; p=reject; sp=quarantine")
        server.set("_dmarc.news.sender.test", "TXT", "v=DMARC1; p=none")
        server.set("_dmarc.sender.co.uk", "TXT", "v=DMARC1; p=quarantine")
        server.set("_dmarc.co.uk", "TXT", "v=DMARC1; p=reject")  # must never apply below it
        server.add("_dmarc.two.test", "TXT", ["v=DMARC1; p=reject", "v=DMARC1; p=none"])
        server.set("_dmarc.bad.test", "TXT", "v=DMARC1; p=maybe")
        server.set("_dmarc.plain.test", "TXT", "some other text")
        yield server


def discover(dns_server, domain):
    resolver = make_resolver(DNSSection(nameservers=(dns_server.nameserver,), timeout=2.0))
    return asyncio.run(dmarc.discover(resolver, domain))


@pytest.mark.parametrize(("domain", "found_at", "p"), [
    ("sender.test", "sender.test", "reject"),
    ("news.sender.test", "news.sender.test", "none"),       # its own record wins
    ("mail.sender.test", "sender.test", "reject"),           # falls back to the org domain
    ("a.b.mail.sender.test", "sender.test", "reject"),
    ("mail.sender.co.uk", "sender.co.uk", "quarantine"),     # PSL: co.uk is a suffix
])
def test_discovery(dns, domain, found_at, p):
    policy = discover(dns, domain)
    assert (policy.found_at, policy.record.p) == (found_at, p)


def test_discovery_never_climbs_to_a_public_suffix(dns):
    policy = discover(dns, "other.co.uk")
    assert policy.record is None and not policy.error and not policy.temporary
    assert not dns.queried("_dmarc.co.uk")


def test_discovery_errors(dns):
    assert discover(dns, "plain.test") == Policy("plain.test")
    assert discover(dns, "nothing.plain.test") == Policy("nothing.plain.test")
    assert discover(dns, "two.test").error == "several DMARC records"
    assert discover(dns, "bad.test").error == "invalid policy p=maybe"
    refused = discover(dns, "elsewhere.invalid")
    assert refused.record is None and "REFUSED" in refused.temporary
