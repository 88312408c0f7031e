"""DKIM verification of every signature on a received message (RFC 6376 §6; RSA and, with
PyNaCl, Ed25519 per RFC 8463), by dkimpy.

The work is split so that neither the event loop nor a worker thread waits on the wrong thing:
the selectors' key records are fetched on the event loop first (``fetch_keys``, through our
resolver), then dkimpy canonicalises, hashes and checks the signatures in a worker thread
(``verify_all``, CPU only: its ``dnsfunc`` answers from what was fetched).

Results (RFC 8601 §2.7.1): pass; fail (the body hash or the signature does not match);
policy (a signature we refuse to trust: rsa-sha1 or an RSA key under 1024 bits, RFC 8301);
neutral (an algorithm we cannot check); permerror (a malformed signature, no key or an unusable
key record, RFC 6376 §6.1.2); temperror (the key could not be looked up); none (no signature).
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import Executor
from dataclasses import dataclass

import dkim
import dns.asyncresolver
from dkim.util import InvalidTagValueList, parse_tag_value

from server.inbound.dnsfunc import TempDNSError, dkimpy_dnsfunc, prefetch_txt

log = logging.getLogger("mailstead.inbound")


class _LibraryLog(logging.LoggerAdapter):
    """dkimpy logs every failed signature as an error; for a receiver that is routine (the
    result is in the A-R field and the transaction's log line), so it goes to debug."""

    def error(self, msg, *args, **kwargs):
        self.debug(msg, *args, **kwargs)


# Passed to dkimpy as its logger, here and in arc.py.
LIBRARY_LOG = _LibraryLog(logging.getLogger("mailstead.inbound.dkimpy"), {})

# RFC 6376 §6.1: "Verifiers MAY limit the number of signatures they evaluate". A message with
# hundreds of signatures is an attack on our CPU and on other people's DNS, not mail.
MAX_SIGNATURES = 10

# RFC 8301 §3.2: RSA keys smaller than 1024 bits must not be considered valid.
MIN_RSA_BITS = 1024

_KNOWN_ALGORITHMS = {b"rsa-sha256", b"rsa-sha1", b"ed25519-sha256"}


@dataclass(frozen=True, slots=True)
class Signature:
    result: str      # pass, fail, policy, neutral, permerror, temperror
    domain: str      # d= (lower-cased)
    selector: str    # s=
    algorithm: str   # a=
    b: str           # the first 8 characters of b= (RFC 6008 header.b)
    reason: str      # why, when not pass


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace")


def signature_fields(message: bytes) -> list[dict[bytes, bytes] | None]:
    """The tag lists of the DKIM-Signature fields, top first, at most MAX_SIGNATURES; None
    for a field that is not a tag list."""
    try:
        parsed = dkim.DKIM(message)
    except dkim.MessageFormatError:
        return []
    out: list[dict[bytes, bytes] | None] = []
    for name, value in parsed.headers:
        if name.lower() != b"dkim-signature":
            continue
        if len(out) == MAX_SIGNATURES:
            log.info("more than %d DKIM signatures; the rest are ignored", MAX_SIGNATURES)
            break
        try:
            out.append(parse_tag_value(value))
        except InvalidTagValueList:
            out.append(None)
    return out


def key_name(sig: dict[bytes, bytes] | None) -> str | None:
    """``<s>._domainkey.<d>``, the key record's name (RFC 6376 §3.6.2.1)."""
    if not sig or not sig.get(b"s") or not sig.get(b"d"):
        return None
    return f"{_text(sig[b's'])}._domainkey.{_text(sig[b'd'])}".lower()


def _header_b(sig: dict[bytes, bytes]) -> str:
    return re.sub(r"\s+", "", _text(sig.get(b"b")))[:8]


def _verify_one(verifier: dkim.DKIM, idx: int, sig: dict[bytes, bytes] | None,
                keys: dict[str, list[bytes] | TempDNSError]) -> Signature:
    if sig is None:
        return Signature("permerror", "", "", "", "", "DKIM-Signature is not a tag list")
    domain, selector = _text(sig.get(b"d")).lower(), _text(sig.get(b"s"))
    algorithm = _text(sig.get(b"a")).lower()

    def result(res: str, reason: str = "") -> Signature:
        return Signature(res, domain, selector, algorithm, _header_b(sig), reason)

    name = key_name(sig)
    if name is None:
        return result("permerror", "signature without d= or s=")
    if algorithm.encode() not in _KNOWN_ALGORITHMS:
        return result("neutral", f"unknown algorithm {algorithm!r}")
    if algorithm == "rsa-sha1":
        return result("policy", "rsa-sha1 is not accepted (RFC 8301)")
    found = keys.get(name)
    if isinstance(found, TempDNSError):
        return result("temperror", f"key lookup failed: {found}")
    if not found:
        return result("permerror", f"no key at {name}")
    try:
        _, bits, ktag, _ = dkim.evaluate_pk(name.encode(), found[0])
    except (dkim.KeyFormatError, ValueError) as err:
        return result("permerror", f"unusable key record: {err}")
    if ktag == b"rsa" and bits < MIN_RSA_BITS:
        return result("policy", f"RSA key of {bits} bits (RFC 8301 requires {MIN_RSA_BITS})")
    if (ktag == b"rsa") != algorithm.startswith("rsa"):
        return result("permerror", f"a={algorithm} but the key is k={_text(ktag)}")
    try:
        ok = verifier.verify(idx, dnsfunc=dkimpy_dnsfunc(keys))
    except dkim.ValidationError as err:
        text = str(err)
        if text.startswith("body hash mismatch"):
            return result("fail", "body hash did not verify")
        return result("permerror", text)
    except dkim.DKIMException as err:
        return result("permerror", str(err) or type(err).__name__)
    return result("pass") if ok else result("fail", "signature did not verify")


def verify_all(message: bytes, keys: dict[str, list[bytes] | TempDNSError]) -> list[Signature]:
    """Check every signature against the fetched ``keys`` (CPU only; run it in a thread)."""
    sigs = signature_fields(message)
    if not sigs:
        return []
    # minkey=0: the key size is judged above, with RFC 8301's reason in the result.
    verifier = dkim.DKIM(message, minkey=0, logger=LIBRARY_LOG)
    return [_verify_one(verifier, i, sig, keys) for i, sig in enumerate(sigs)]


async def check(message: bytes, resolver: dns.asyncresolver.Resolver,
                executor: Executor) -> list[Signature]:
    """Every signature's result, top first; [] when the message has none (dkim=none)."""
    sigs = signature_fields(message)
    if not sigs:
        return []
    names = [n for n in (key_name(s) for s in sigs) if n]
    keys = await prefetch_txt(resolver, names)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, verify_all, message, keys)
