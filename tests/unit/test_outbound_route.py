"""MX routing against the loopback DNS server (RFC 5321 §5.1, RFC 7505)."""

from __future__ import annotations

import asyncio

import pytest

from server.outbound.route import RouteError, mx_hosts
from tests.support.dnsserver import DNSTestServer

ZONE = """\
$TTL 300
$ORIGIN route.test.
@        IN SOA ns.route.test. hostmaster.route.test. 1 3600 600 86400 60
multi    IN MX 20 backup.route.test.
multi    IN MX 10 primary.route.test.
primary  IN A 192.0.2.10
primary  IN AAAA 2001:db8::10
backup   IN A 192.0.2.20
nomx     IN A 192.0.2.30
nullmx   IN MX 0 .
nowhere  IN TXT "no mail here"
dangling IN MX 10 missing.route.test.
"""


@pytest.fixture(scope="module")
def resolver():
    with DNSTestServer(ZONE) as dns:
        yield dns.async_resolver()


def hosts(resolver, domain):
    return asyncio.run(mx_hosts(resolver, domain))


def test_preference_order_and_ipv4_first(resolver):
    got = hosts(resolver, "multi.route.test")
    assert [h.name for h in got] == ["primary.route.test", "backup.route.test"]
    assert got[0].addresses == ("192.0.2.10", "2001:db8::10")


def test_no_mx_falls_back_to_the_address(resolver):
    [host] = hosts(resolver, "nomx.route.test")
    assert host.name == "nomx.route.test" and host.addresses == ("192.0.2.30",)


@pytest.mark.parametrize(("domain", "enhanced", "permanent"), [
    ("nullmx.route.test", "5.1.10", True),     # RFC 7505
    ("absent.route.test", "5.1.2", True),      # NXDOMAIN
    ("nowhere.route.test", "5.4.4", True),     # neither MX nor address
    ("dangling.route.test", "5.4.4", True),    # the MX host does not exist
    ("elsewhere.test", "4.4.3", False),        # the DNS server refuses: try again later
])
def test_failures(resolver, domain, enhanced, permanent):
    with pytest.raises(RouteError) as info:
        hosts(resolver, domain)
    assert info.value.enhanced == enhanced and info.value.permanent is permanent
