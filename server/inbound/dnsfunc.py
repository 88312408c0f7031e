"""Our resolver in the shapes pyspf and dkimpy want, with "no such record" kept apart from
"could not find out".

The distinction is the whole point: NXDOMAIN and NODATA are answers (no SPF record, no DMARC
policy, no DKIM key), while a timeout, SERVFAIL, REFUSED or an unreachable server say nothing
about the domain. RFC 7208 §5 and RFC 7489 §6.6.3 give the latter their own result
(temperror), and a verdict built on a lookup that failed would be a wrong one: a p=reject
domain would look like a domain with no policy. So every failure that is not an answer
becomes ``TempDNSError``.

All lookups are made by the one ``dns.asyncresolver.Resolver`` from ``server/dnsresolve.py``
(``[dns] nameservers`` and ``timeout``):

* DKIM and ARC keys are fetched on the event loop before verification (``prefetch_txt``);
  dkimpy then gets ``dkimpy_dnsfunc``, which answers from what was fetched and never looks
  anything up itself.
* pyspf is synchronous and runs in a worker thread; ``pyspf_lookup`` hands each of its lookups
  back to the event loop's resolver (``SyncBridge``). pyspf's own module-level ``DNSLookup``
  is replaced at import (see ``server/inbound/spf.py``), so a pyspf query made without our
  bridge fails with a temperror instead of asking the system resolver.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

log = logging.getLogger("mailstead.inbound")


class TempDNSError(Exception):
    """A lookup that got no answer (timeout, SERVFAIL, REFUSED, no server reachable)."""


def _name(text: str) -> dns.name.Name | None:
    """The absolute DNS name, or None when ``text`` cannot be one (so it has no records)."""
    try:
        return dns.name.from_text(text.rstrip(".") + ".")
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return None


async def lookup(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> list:
    """The rdata of ``name``/``rdtype``: [] for NXDOMAIN or NODATA, TempDNSError for no answer.

    CNAMEs are followed by the resolver; search domains are never applied (the names we look
    up are always absolute).
    """
    qname = _name(name)
    if qname is None:
        return []
    try:
        answer = await resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except dns.resolver.YXDOMAIN:
        return []  # a DNAME substitution too long for a name: no such name either
    except (dns.exception.DNSException, OSError) as err:
        # Timeout/LifetimeTimeout, NoNameservers (SERVFAIL, REFUSED, unreachable), and any
        # malformed reply: none of them is an answer about the domain.
        raise TempDNSError(f"{name.rstrip('.')} {rdtype}: {_describe(err)}") from None
    return list(answer.rrset) if answer.rrset is not None else []


def _describe(err: Exception) -> str:
    """A short text for the A-R reason and the log (dnspython's names every server tried)."""
    if isinstance(err, dns.exception.Timeout):
        return "timed out"
    if isinstance(err, dns.resolver.NoNameservers):
        errors = err.kwargs.get("errors") or []
        answers = sorted({str(e[3]) for e in errors})
        return "no nameserver answered" + (f" ({', '.join(answers)})" if answers else "")
    return f"{type(err).__name__}: {err}"


async def txt_records(resolver: dns.asyncresolver.Resolver, name: str) -> list[bytes]:
    """Each TXT record at ``name`` as one bytes value: its character-strings joined, as
    RFC 6376 §3.6.2.2, RFC 7208 §3.3 and RFC 7489 §6.1 read them."""
    return [b"".join(rr.strings) for rr in await lookup(resolver, name, "TXT")]


def _key(name: str | bytes) -> str:
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return name.lower().rstrip(".")


async def prefetch_txt(resolver: dns.asyncresolver.Resolver,
                       names: Iterable[str]) -> dict[str, list[bytes] | TempDNSError]:
    """Look up the TXT records of every name at once; a failure is kept as its error."""
    unique = sorted({_key(n) for n in names})
    results = await asyncio.gather(*(txt_records(resolver, n) for n in unique),
                                   return_exceptions=True)
    out: dict[str, list[bytes] | TempDNSError] = {}
    for name, result in zip(unique, results, strict=True):
        if isinstance(result, TempDNSError):
            out[name] = result
        elif isinstance(result, BaseException):
            raise result
        else:
            out[name] = result
    return out


class NotPrefetched(Exception):
    """dkimpy asked for a name we did not fetch: a bug, never a reason to go to the network."""


def dkimpy_dnsfunc(prefetched: dict[str, list[bytes] | TempDNSError]):
    """A ``dnsfunc(name, timeout=...)`` for dkimpy answering from ``prefetched``.

    dkimpy wants the key record's text or None. With several TXT records at a selector the
    first one is taken, as dkimpy's own lookup does (RFC 6376 §3.6.2.2 leaves it undefined).
    A name that failed raises ``TempDNSError`` (callers look at ``prefetched`` first).
    """

    def dnsfunc(name, timeout=5):
        key = _key(name)
        if key not in prefetched:
            raise NotPrefetched(key)
        found = prefetched[key]
        if isinstance(found, TempDNSError):
            raise found
        return found[0] if found else None

    return dnsfunc


# --- pyspf: synchronous lookups from a worker thread, answered on the event loop ---

_local = threading.local()


class SyncBridge:
    """Runs our async resolver's lookups for code in a worker thread (pyspf).

    The worker blocks on ``run_coroutine_threadsafe(...).result()`` while the event loop does
    the I/O, so the loop is never blocked and the one resolver serves every lookup.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, resolver: dns.asyncresolver.Resolver):
        self.loop = loop
        self.resolver = resolver

    def lookup(self, name: str, rdtype: str) -> list:
        future = asyncio.run_coroutine_threadsafe(lookup(self.resolver, name, rdtype), self.loop)
        # The resolver's lifetime bounds the lookup; the margin only guards against a loop
        # that never runs the coroutine (which would otherwise hang this worker forever).
        try:
            return future.result(self.resolver.lifetime + 5)
        except TimeoutError:
            future.cancel()
            raise TempDNSError(f"{name} {rdtype}: no answer from the event loop") from None

    def __enter__(self) -> SyncBridge:
        _local.bridge = self
        return self

    def __exit__(self, *exc) -> None:
        _local.bridge = None


def current_bridge() -> SyncBridge | None:
    """The bridge installed for this worker thread, if any."""
    return getattr(_local, "bridge", None)
