"""SPF (server/inbound/spf.py, RFC 7208) by pyspf, every lookup through our resolver to the
loopback test DNS server: each result, the HELO identity, and temperror (never fail) when
the DNS gives no answer."""

from __future__ import annotations

import pytest
import spf as pyspf

from server.config import DNSSection
from server.dnsresolve import make_resolver
from server.inbound import spf
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.instance import free_port
from tests.support.mailauth import run

RECORDS = {
    "pass.test": "v=spf1 ip4:127.0.0.1 -all",
    "fail.test": "v=spf1 ip4:192.0.2.1 -all",
    "soft.test": "v=spf1 ip4:192.0.2.1 ~all",
    "neutral.test": "v=spf1 ?all",
    "broken.test": "v=spf1 ip4:127.0.0.1 bogus:mechanism -all",
    "include.test": "v=spf1 include:pass.test -all",
    "mx.test": "v=spf1 mx -all",
    "helo.test": "v=spf1 a -all",
    "refused-include.test": "v=spf1 include:elsewhere.invalid -all",
    "none.test": None,
}


@pytest.fixture(scope="module")
def dns():
    with DNSTestServer(DEFAULT_ZONE) as server:
        for domain, record in RECORDS.items():
            server.add_zone(domain)
            if record:
                server.set(domain, "TXT", record)
        server.add_zone("two.test")
        server.add("two.test", "TXT", ["v=spf1 -all", "v=spf1 +all"])
        server.set("mx.test", "MX", "10 mail.mx.test.")
        server.set("mail.mx.test", "A", "127.0.0.1")
        server.set("mail.helo.test", "A", "127.0.0.1")
        server.set("helo.test", "A", "127.0.0.1")
        yield server


def check(dns_server, mail_from, ip="127.0.0.1", helo="client.remote.test", nameserver=None):
    resolver = make_resolver(DNSSection(nameservers=(nameserver or dns_server.nameserver,),
                                        timeout=2.0))
    return run(spf.check_both, resolver, ip=ip, helo=helo, mail_from=mail_from)


@pytest.mark.parametrize(("domain", "ip", "result"), [
    ("pass.test", "127.0.0.1", "pass"),
    ("pass.test", "127.0.0.2", "fail"),
    ("fail.test", "127.0.0.1", "fail"),
    ("soft.test", "127.0.0.1", "softfail"),
    ("neutral.test", "127.0.0.1", "neutral"),
    ("none.test", "127.0.0.1", "none"),
    ("nxdomain.none.test", "127.0.0.1", "none"),
    ("broken.test", "127.0.0.1", "permerror"),
    ("two.test", "127.0.0.1", "permerror"),  # RFC 7208 §4.5: two records
    ("include.test", "127.0.0.1", "pass"),
    ("mx.test", "127.0.0.1", "pass"),
    ("mx.test", "::ffff:127.0.0.2", "fail"),
])
def test_results(dns, domain, ip, result):
    mail_from, _ = check(dns, f"bob@{domain}", ip=ip)
    assert (mail_from.identity, mail_from.domain, mail_from.result) == ("mailfrom", domain,
                                                                        result)


def test_lookups_go_to_our_server(dns):
    check(dns, "bob@include.test")
    assert dns.queried("include.test", "TXT") and dns.queried("pass.test", "TXT")


def test_helo_identity(dns):
    mail_from, helo = check(dns, "bob@pass.test", helo="helo.test")
    assert mail_from.result == "pass"
    assert (helo.identity, helo.domain, helo.result) == ("helo", "helo.test", "pass")
    _, helo = check(dns, "bob@pass.test", ip="127.0.0.9", helo="helo.test")
    assert helo.result == "fail"


def test_null_sender_checks_only_helo(dns):
    """RFC 7208 §2.4: with MAIL FROM:<> the identity is postmaster@HELO."""
    mail_from, helo = check(dns, "", helo="helo.test")
    assert mail_from is None and helo.result == "pass"


@pytest.mark.parametrize("name", ["[127.0.0.1]", "localhost", "", "bad..name"])
def test_unusable_helo_is_not_checked(dns, name):
    """RFC 7208 §2.3: only a fully qualified HELO name is checked."""
    _, helo = check(dns, "bob@pass.test", helo=name)
    assert helo is None


def test_refused_lookup_is_temperror(dns):
    """REFUSED (a name in no zone of the test server) says nothing about the domain."""
    mail_from, _ = check(dns, "bob@elsewhere.invalid")
    assert mail_from.result == "temperror"
    assert "REFUSED" in mail_from.reason


def test_failure_deep_in_an_include_is_temperror(dns):
    mail_from, _ = check(dns, "bob@refused-include.test")
    assert mail_from.result == "temperror"


def test_unreachable_server_is_temperror(dns):
    """Nothing listens on the port: temperror, never fail or none."""
    mail_from, helo = check(dns, "bob@fail.test", nameserver=f"127.0.0.1:{free_port()}",
                            helo="helo.test")
    assert mail_from.result == "temperror" and helo.result == "temperror"


def test_pyspf_without_our_resolver_never_asks_the_system():
    """pyspf's module-level lookup is ours: with no bridge installed it gives temperror."""
    result, _, _ = pyspf.query(i="127.0.0.1", s="bob@pass.test", h="x.test").check()
    assert result == "temperror"
