"""DNSBL lookups against blocklist zones served by the loopback test DNS server."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from server.config import DNSSection, parse_config
from server.dnsresolve import make_resolver
from server.spam import SpamFilter
from server.spam.dnsbl import CACHE_SECONDS, DNSBL, query_name
from tests.support.dnsserver import DNSTestServer

ZONES = """\
$TTL 60
$ORIGIN bl.test.
@                   IN SOA ns.bl.test. hostmaster.bl.test. 1 3600 600 86400 60
5.113.0.203         IN A   127.0.0.2
5.113.0.203         IN TXT "listed: see https://bl.test/203.0.113.5"
6.113.0.203         IN A   127.255.255.254
7.113.0.203         IN A   192.0.2.1
8.113.0.203         IN A   127.0.0.4
8.113.0.203         IN A   127.0.0.10

$ORIGIN second.test.
@                   IN SOA ns.second.test. hostmaster.second.test. 1 3600 600 86400 60
9.113.0.203         IN A   127.0.0.3
5.113.0.203         IN A   127.0.0.2
"""
V6 = "2001:db8::1"
V6_NAME = ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test")


@pytest.fixture(scope="module")
def dns():
    with DNSTestServer(ZONES) as server:
        server.add(V6_NAME, "A", "127.0.0.2")
        yield server


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dnsbl(server, zones=("bl.test",), timeout=2.0, clock=time.monotonic) -> DNSBL:
    section = DNSSection(nameservers=(server.nameserver,), timeout=timeout)
    return DNSBL(zones, make_resolver(section), clock=clock)


def check(bl: DNSBL, ip: str):
    return asyncio.run(bl.check(ip))


def test_query_names():
    # RFC 5782 §2.1 and §2.4
    assert query_name("192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    assert query_name(V6, "bl.test.") == V6_NAME


def test_listed_with_reason(dns):
    listing = check(dnsbl(dns), "203.0.113.5")
    assert (listing.zone, listing.code) == ("bl.test", "127.0.0.2")
    assert listing.text == "listed: see https://bl.test/203.0.113.5"


def test_not_listed(dns):
    assert check(dnsbl(dns), "203.0.113.1") is None  # NXDOMAIN


def test_spamhaus_refusal_codes_are_not_a_listing(dns):
    assert check(dnsbl(dns), "203.0.113.6") is None


def test_answers_outside_127_are_not_a_listing(dns):
    # Some resolvers (and dead zones with wildcards) answer every name with an ad server.
    assert check(dnsbl(dns), "203.0.113.7") is None


def test_several_codes(dns):
    assert check(dnsbl(dns), "203.0.113.8").code == "127.0.0.10"  # the smallest


def test_ipv6_nibbles(dns):
    assert check(dnsbl(dns), V6).code == "127.0.0.2"
    assert dns.queried(V6_NAME, "A")


def test_ipv4_mapped_address_is_looked_up_as_ipv4(dns):
    assert check(dnsbl(dns), "::ffff:203.0.113.5").zone == "bl.test"


def test_first_configured_zone_wins(dns):
    assert check(dnsbl(dns, ("second.test", "bl.test")), "203.0.113.5").zone == "second.test"
    assert check(dnsbl(dns, ("bl.test", "second.test")), "203.0.113.9").zone == "second.test"


def test_cached_per_ip(dns):
    clock = Clock()
    bl = dnsbl(dns, clock=clock)
    name = "1.113.0.203.bl.test."
    before = dns.queries.count((name, "A"))
    assert check(bl, "203.0.113.1") is None
    assert check(bl, "203.0.113.1") is None
    assert dns.queries.count((name, "A")) == before + 1
    clock.now += CACHE_SECONDS + 1
    assert check(bl, "203.0.113.1") is None
    assert dns.queries.count((name, "A")) == before + 2


def test_timeout_fails_open():
    # A UDP socket nobody reads from: every query times out.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        section = DNSSection(nameservers=(f"127.0.0.1:{silent.getsockname()[1]}",), timeout=0.3)
        bl = DNSBL(("bl.test",), make_resolver(section))
        began = time.monotonic()
        assert check(bl, "203.0.113.5") is None
        assert time.monotonic() - began < 3


def test_zone_that_does_not_exist_is_not_a_listing(dns):
    assert check(dnsbl(dns, ("gone.test",)), "203.0.113.5") is None  # REFUSED


def _filter(dns, tmp_path, extra=""):
    text = (f'[server]\nhostname = "mail.example.test"\ndata_dir = "{tmp_path}"\n'
            f'[dns]\nnameservers = ["{dns.nameserver}"]\n'
            f'[spam]\ndnsbl_zones = ["bl.test"]\n{extra}')
    return SpamFilter(parse_config(text, tmp_path / "mailstead.toml"))


def test_filter_reply_names_client_and_zone(dns, tmp_path):
    reply = asyncio.run(_filter(dns, tmp_path).connect_check("203.0.113.5"))
    assert str(reply) == ("554 5.7.1 Service unavailable; client [203.0.113.5] blocked using "
                          "bl.test")
    assert asyncio.run(_filter(dns, tmp_path).connect_check("203.0.113.1")) is None


def test_filter_skips_allowed_clients(dns, tmp_path):
    dns.add("5.100.51.198.bl.test", "A", "127.0.0.2")
    spam = _filter(dns, tmp_path, "[abuse]\nallow = [\"198.51.100.0/28\"]\n")
    assert asyncio.run(spam.connect_check("198.51.100.5")) is None
    assert not dns.queried("5.100.51.198.bl.test")
    assert asyncio.run(spam.connect_check("127.0.0.1")) is None  # not in allow: looked up
    assert dns.queried("1.0.0.127.bl.test")


def test_filter_off_without_zones(dns, tmp_path):
    text = f'[server]\nhostname = "mail.example.test"\ndata_dir = "{tmp_path}"\n'
    spam = SpamFilter(parse_config(text, tmp_path / "mailstead.toml"))
    assert asyncio.run(spam.connect_check("203.0.113.5")) is None
