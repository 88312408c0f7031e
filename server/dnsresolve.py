"""DNS lookups for the daemons, through one resolver built from ``[dns]``.

With ``[dns] nameservers`` set, only those servers are asked (tests point it at a loopback
server and must never reach the system resolver); otherwise the system configuration is used.
"""

from __future__ import annotations

import ipaddress
import logging

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
import dns.reversename

from server.config import DNSSection, parse_host_port

log = logging.getLogger("mailstead.dns")


# Entries in a cached resolver; each lives for its record's TTL (negative answers for the
# zone's SOA minimum), as in a local caching resolver, which a small mail host rarely runs.
CACHE_ENTRIES = 20_000


def make_resolver(section: DNSSection, cache: bool = False) -> dns.asyncresolver.Resolver:
    """The resolver for ``[dns]``. ``cache``: keep answers for their TTL -- for the SMTP
    handlers, which otherwise ask the same PTR/A/SPF/DKIM questions for every message of a
    busy sender; not for the DNS check, which must see a record the owner just fixed."""
    if section.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        servers = []
        for text in section.nameservers:
            host, port = parse_host_port(text, default_port=53)
            servers.append(dns.nameserver.Do53Nameserver(host, port))
        resolver.nameservers = servers
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = section.timeout
    resolver.timeout = min(2.0, section.timeout)
    if cache:
        resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
    return resolver


async def verified_reverse_name(resolver: dns.asyncresolver.Resolver, ip: str) -> str | None:
    """The client's host name if its PTR record points back to ``ip`` (forward-confirmed
    reverse DNS, as Postfix reports it in Received headers); None otherwise or on any error."""
    try:
        addr = ipaddress.ip_address(ip)
        ptr = await resolver.resolve(dns.reversename.from_address(ip), "PTR")
        for rr in ptr:
            name = rr.target.to_text(omit_final_dot=True)
            rtype = "AAAA" if addr.version == 6 else "A"
            try:
                forward = await resolver.resolve(name, rtype)
            except (dns.exception.DNSException, OSError):
                continue
            if any(ipaddress.ip_address(a.address) == addr for a in forward):
                return name.lower()
    except (dns.exception.DNSException, OSError, ValueError) as err:
        log.debug("reverse lookup of %s failed: %s", ip, err)
    return None
