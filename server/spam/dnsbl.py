"""DNS blocklist lookups of the connecting client (RFC 5782).

An IPv4 address is looked up as its reversed octets under each zone (192.0.2.99 in
zen.example -> ``99.2.0.192.zen.example``), an IPv6 address as its 32 reversed nibbles (RFC 5782
§2.4). An A record in 127.0.0.0/8 means listed — except 127.255.255.0/24, which Spamhaus uses for
"your query was refused" (public resolver, over quota): those say nothing about the client, and
treating them as listed would refuse all mail. NXDOMAIN, any other answer, a timeout or a DNS
error mean not listed: a blocklist that is down must not stop mail (fail open).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

log = logging.getLogger("mailstead.spam")

CACHE_SECONDS = 300.0  # a client reconnecting within this is not looked up again
CACHE_MAX = 10_000  # entries; beyond this the oldest are dropped (a botnet must not grow it)
_LISTED = ipaddress.ip_network("127.0.0.0/8")
_REFUSED = ipaddress.ip_network("127.255.255.0/24")  # Spamhaus "query refused" return codes


@dataclass(frozen=True, slots=True)
class Listing:
    zone: str
    code: str  # the A record returned, e.g. "127.0.0.2"
    text: str = ""  # the zone's TXT record, if any (often a URL explaining the listing)


def query_name(ip: str, zone: str) -> str:
    """The name to look up for ``ip`` under ``zone`` (RFC 5782 §2.1 and §2.4)."""
    addr = ipaddress.ip_address(ip)
    # IPv4: the octets; IPv6: every nibble, zeros included.
    labels = str(addr).split(".") if addr.version == 4 else list(addr.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone.rstrip(".")


def _client_ip(ip: str) -> str | None:
    """The address to look up (None if ``ip`` is not one). Which clients are looked up at all
    is the caller's choice: SpamFilter skips ``[abuse] allow``, loopback by default."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped  # ::ffff:192.0.2.1 from a dual-stack socket is IPv4
    return str(addr)


class DNSBL:
    def __init__(self, zones: Sequence[str], resolver: dns.asyncresolver.Resolver,
                 clock: Callable[[], float] = time.monotonic):
        self.zones = tuple(zones)
        self.resolver = resolver
        self.clock = clock
        self._cache: dict[str, tuple[float, Listing | None]] = {}

    async def check(self, ip: str) -> Listing | None:
        """The first zone (in configured order) that lists ``ip``, or None."""
        addr = _client_ip(ip)
        if addr is None or not self.zones:
            return None
        now = self.clock()
        hit = self._cache.get(addr)
        if hit is not None and hit[0] > now:
            return hit[1]
        results = await asyncio.gather(*(self._lookup(addr, z) for z in self.zones))
        listing = next((r for r in results if r is not None), None)
        self._remember(addr, now + CACHE_SECONDS, listing)
        return listing

    def _remember(self, addr: str, until: float, listing: Listing | None) -> None:
        if len(self._cache) >= CACHE_MAX:
            now = self.clock()
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            while len(self._cache) >= CACHE_MAX:  # dicts keep insertion order: oldest first
                del self._cache[next(iter(self._cache))]
        self._cache[addr] = (until, listing)

    async def _lookup(self, ip: str, zone: str) -> Listing | None:
        name = query_name(ip, zone)
        try:
            answer = await self.resolver.resolve(name, "A")
        except dns.resolver.NXDOMAIN:
            return None
        except (dns.exception.DNSException, OSError) as err:
            log.info("dnsbl %s: lookup of %s failed (%s); counting it as not listed",
                     zone, ip, type(err).__name__)
            return None
        codes = []
        for rr in answer:
            code = ipaddress.ip_address(rr.address)
            if code in _REFUSED:
                log.warning("dnsbl %s refused our query (%s): it does not answer through this "
                            "resolver or over this quota; the check is not working", zone, code)
                return None
            if code in _LISTED:
                codes.append(str(code))
        if not codes:
            return None
        return Listing(zone, min(codes), await self._reason(name))

    async def _reason(self, name: str) -> str:
        try:
            answer = await self.resolver.resolve(name, "TXT")
        except (dns.exception.DNSException, OSError):
            return ""
        for rr in answer:
            text = b"".join(rr.strings).decode("ascii", "replace")
            return "".join(ch for ch in text if " " <= ch <= "~")[:200]
        return ""
