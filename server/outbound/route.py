"""Where mail for a domain goes: RFC 5321 §5.1 MX lookup with fallback to the address records,
and RFC 7505 null MX.

Every lookup goes through the resolver built from ``[dns]``, so tests answer it from loopback.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver


class RouteError(Exception):
    """No way to the domain now; ``permanent`` says whether retrying can help."""

    def __init__(self, message: str, permanent: bool, enhanced: str):
        super().__init__(message)
        self.permanent = permanent
        self.enhanced = enhanced


@dataclass(frozen=True)
class MXHost:
    name: str
    preference: int
    addresses: tuple[str, ...]


async def _addresses(resolver: dns.asyncresolver.Resolver, name: str) -> tuple[str, ...]:
    found: list[str] = []
    temporary = None
    for rtype in ("AAAA", "A"):
        try:
            answer = await resolver.resolve(name, rtype)
            found += [rr.address for rr in answer]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException as err:
            temporary = err
    if not found and temporary is not None:
        raise RouteError(f"DNS lookup of {name} failed: {temporary}", False, "4.4.3")
    # IPv4 first: most mail hosts' IPv6 reverse DNS and reputation are weaker, and this
    # machine may have no IPv6 route at all; IPv6 is still tried when IPv4 fails.
    return tuple(sorted(found, key=lambda a: ":" in a))


async def mx_hosts(resolver: dns.asyncresolver.Resolver, domain: str) -> list[MXHost]:
    """The hosts to try for ``domain``, best first (equal preferences shuffled, §5.1)."""
    try:
        answer = await resolver.resolve(domain, "MX")
        records = [(rr.preference, rr.exchange.to_text(omit_final_dot=True).lower())
                   for rr in answer]
    except dns.resolver.NXDOMAIN:
        raise RouteError(f"domain {domain} does not exist", True, "5.1.2") from None
    except dns.resolver.NoAnswer:
        records = []
    except dns.exception.DNSException as err:
        raise RouteError(f"MX lookup for {domain} failed: {err}", False, "4.4.3") from None
    if any(name in ("", ".") for _, name in records):
        # RFC 7505 §3: "0 ." says the domain accepts no mail at all.
        raise RouteError(f"{domain} accepts no mail (null MX)", True, "5.1.10")
    if not records:
        # §5.1: no MX, so the domain itself is the implicit MX.
        records = [(0, domain)]
    random.shuffle(records)
    records.sort(key=lambda r: r[0])
    hosts = []
    errors = []
    for preference, name in records:
        try:
            addresses = await _addresses(resolver, name)
        except RouteError as err:
            errors.append(err)
            continue
        if addresses:
            hosts.append(MXHost(name, preference, addresses))
    if not hosts:
        if errors:
            raise errors[0]
        # Every name answered, and none has an address: DNS says there is nowhere to go.
        raise RouteError(f"no address for any mail host of {domain}", True, "5.4.4")
    return hosts
