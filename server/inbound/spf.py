"""SPF (RFC 7208) of the MAIL FROM and HELO identities, evaluated by pyspf.

pyspf does the record parsing, macro expansion and the processing limits (10 DNS-querying
terms, RFC 7208 §4.6.4; 2 void lookups) itself. Its lookups go through one function,
``spf.DNSLookup``, which we replace with ``_pyspf_lookup``: it answers through the worker
thread's ``SyncBridge`` (our resolver, ``server/inbound/dnsfunc.py``) and, without one,
fails with a TempError, so pyspf can never fall back to the system resolver.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

import dns.asyncresolver
import spf as pyspf

from server.addresses import AddressError, normalize_domain
from server.inbound.dnsfunc import SyncBridge, TempDNSError, current_bridge

# RFC 7208 §4.6.4 "at least 20 seconds" for the whole evaluation; pyspf stops with a
# temperror when its lookups have used this much time.
MAX_QUERY_TIME = 20.0

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")


@dataclass(frozen=True, slots=True)
class SPFResult:
    identity: str  # "mailfrom" or "helo" (RFC 7208 §2.3, §2.4)
    domain: str    # the domain checked ("" when there was none to check)
    result: str    # one of RESULTS
    reason: str    # pyspf's explanation, or why no check was made


def _to_pyspf(name: str, qtype: str, records: list) -> list[tuple[tuple[str, str], object]]:
    """Our rdata as pyspf's DNSLookup returns it: ((name, qtype), value) pairs."""
    out = []
    for rr in records:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), rr.address))
        elif qtype == "MX":
            out.append(((name, qtype), (rr.preference, rr.exchange.to_text(True))))
        elif qtype == "PTR":
            out.append(((name, qtype), rr.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), list(rr.strings)))
    return out


def _pyspf_lookup(name, qtype, strict=True, timeout=None):
    bridge = current_bridge()
    if bridge is None:
        raise pyspf.TempError("DNS: no resolver configured for this SPF check")
    try:
        return _to_pyspf(name, qtype, bridge.lookup(name, qtype))
    except TempDNSError as err:
        raise pyspf.TempError(f"DNS {err}") from None


# The one place pyspf looks names up (spf.query.dns calls the module-level DNSLookup).
pyspf.DNSLookup = _pyspf_lookup


def helo_domain(helo: str) -> str | None:
    """The HELO name if it is a domain SPF can check; None for address literals and names
    that are not fully qualified (RFC 7208 §2.3: then there is no HELO check)."""
    if not helo or helo.startswith("[") or "." not in helo.strip("."):
        return None
    try:
        return normalize_domain(helo)
    except AddressError:
        return None


def check(bridge: SyncBridge, ip: str, identity: str, sender: str, helo: str) -> SPFResult:
    """One SPF evaluation (blocking: run it in a worker thread).

    ``sender`` is the MAIL FROM address for the mailfrom identity, ``postmaster@<helo>`` for
    the helo identity (RFC 7208 §2.3). pyspf's ``strict`` mode is RFC 7208's: a syntax error
    anywhere is a permerror.
    """
    domain = sender.rpartition("@")[2].lower()
    try:
        domain = normalize_domain(domain)
    except AddressError as err:
        # RFC 7208 §4.3: a malformed domain gives "none".
        return SPFResult(identity, domain, "none", f"not a valid domain: {err}")
    with bridge:
        query = pyspf.query(i=ip, s=sender, h=helo, strict=True, querytime=MAX_QUERY_TIME)
        result, _code, explanation = query.check()
    return SPFResult(identity, domain, result if result in RESULTS else "permerror",
                     explanation)


async def check_both(resolver: dns.asyncresolver.Resolver, executor: Executor, *, ip: str,
                     helo: str, mail_from: str) -> tuple[SPFResult | None, SPFResult | None]:
    """The (mailfrom, helo) results. With the null reverse-path the mailfrom identity is
    postmaster@HELO (RFC 7208 §2.4), so only the HELO check is made and mailfrom is None;
    helo is None when the HELO name cannot be checked."""
    loop = asyncio.get_running_loop()
    bridge = SyncBridge(loop, resolver)
    name = helo_domain(helo)
    jobs = []
    if mail_from:
        jobs.append(loop.run_in_executor(executor, check, bridge, ip, "mailfrom", mail_from,
                                         helo))
    if name:
        jobs.append(loop.run_in_executor(executor, check, bridge, ip, "helo",
                                         f"postmaster@{name}", name))
    results = await asyncio.gather(*jobs)
    from_result = results[0] if mail_from else None
    helo_result = results[-1] if name else None
    return from_result, helo_result
