"""ARC (RFC 8617): verifying the chain a message arrives with, and sealing what we forward.

Both by dkimpy (``dkim.arc_verify``, ``dkim.arc_sign``; ARC needs the ``authres`` package,
dkimpy's "arc" extra). As for DKIM, the keys of every ARC-Seal and ARC-Message-Signature are
fetched on the event loop through our resolver first, and dkimpy checks the chain in a worker
thread against what was fetched.

Sealing: when the MX forwards a message to an external alias destination, we add an ARC set
(RFC 8617 §5.1) made with the forwarding domain's RSA DKIM key (``server/dkimkeys.py``; dkimpy
seals with rsa-sha256 only): ARC-Authentication-Results copies our Authentication-Results,
ARC-Message-Signature signs the message as it leaves, ARC-Seal signs the chain with cv= set
from our arc= result. The next hop can then trust our SPF/DKIM/DMARC results although
forwarding broke SPF (and a mailing list footer would break DKIM).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

import dkim
import dns.asyncresolver
from dkim.util import InvalidTagValueList, parse_tag_value

from server import dkimkeys
from server.dkimrsa import PreparedKey
from server.dkimsign import headers_to_sign
from server.inbound.dkimcheck import LIBRARY_LOG
from server.inbound.dnsfunc import TempDNSError, dkimpy_dnsfunc, prefetch_txt

# RFC 8617 §4.2.1: instances run from 1 to 50; a longer chain is invalid (cv=fail).
MAX_INSTANCES = 50
_ARC_FIELDS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
# dkimpy's chain-validation values, by the names RFC 8617 §4.4 gives them.
_CV = {dkim.CV_Pass: "pass", dkim.CV_Fail: "fail", dkim.CV_None: "none"}


@dataclass(frozen=True, slots=True)
class ARCResult:
    result: str                # pass, fail, none, temperror
    instances: int = 0         # the chain's length
    sealer: str = ""           # d= of the newest ARC-Seal
    reason: str = ""


class SealError(Exception):
    """The message cannot be sealed (no key, or dkimpy refused)."""


def _arc_fields(message: bytes) -> list[tuple[bytes, bytes]]:
    try:
        return [(n.lower(), v) for n, v in dkim.DKIM(message).headers
                if n.lower() in _ARC_FIELDS]
    except dkim.MessageFormatError:
        return []


def key_names(fields: list[tuple[bytes, bytes]]) -> list[str]:
    """The key records the seals and message signatures point at (``s._domainkey.d``)."""
    names = []
    for name, value in fields:
        if name == b"arc-authentication-results":
            continue
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            continue  # dkimpy reports the malformed field as a failed chain
        if tags.get(b"s") and tags.get(b"d"):
            names.append(f"{tags[b's'].decode('ascii', 'replace')}._domainkey."
                         f"{tags[b'd'].decode('ascii', 'replace')}".lower())
    return names


def verify_with(message: bytes, keys: dict[str, list[bytes] | TempDNSError]) -> ARCResult:
    """Validate the chain against the fetched ``keys`` (CPU only; run it in a thread)."""
    failed = [str(v) for v in keys.values() if isinstance(v, TempDNSError)]
    if failed:
        return ARCResult("temperror", reason=f"key lookup failed: {failed[0]}")
    cv, sets, reason = dkim.arc_verify(message, logger=LIBRARY_LOG, dnsfunc=dkimpy_dnsfunc(keys))
    if cv == dkim.CV_None:
        return ARCResult("none")
    sealer = sets[0].get("as-domain", b"").decode("ascii", "replace") if sets else ""
    # None: an earlier sealer already said cv=fail, so the chain ends in failure (§5.2).
    result = _CV.get(cv, "fail")
    return ARCResult(result, len(sets), sealer.lower(), "" if result == "pass" else reason)


async def check(message: bytes, resolver: dns.asyncresolver.Resolver,
                executor: Executor) -> ARCResult:
    fields = _arc_fields(message)
    if not fields:
        return ARCResult("none")
    if len(fields) > 3 * MAX_INSTANCES:
        return ARCResult("fail", reason=f"more than {MAX_INSTANCES} ARC sets")
    keys = await prefetch_txt(resolver, key_names(fields))
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, verify_with, message, keys)


def sealing_key(dkim_dir, domain: str) -> dkimkeys.DKIMKey | None:
    """The domain's newest RSA key (the one its published DKIM record is for)."""
    rsa = [k for k in dkimkeys.keys_for(dkim_dir, domain) if k.algorithm == "rsa"]
    return rsa[-1] if rsa else None


def seal(message: bytes, *, authserv_id: str, key: dkimkeys.DKIMKey,
         timestamp: int | None = None) -> bytes:
    """The ARC set to prepend to ``message`` (CRLF, folded; blocking: RSA signing).

    ``message`` must carry our ``Authentication-Results`` field, with an ``arc=`` result of
    pass, fail or none: dkimpy copies it into ARC-Authentication-Results and takes cv= from it.
    """
    try:
        parsed = dkim.DKIM(message)
        include = headers_to_sign(parsed.headers)
        lines = dkim.arc_sign(message, key.selector.encode("ascii"),
                              key.domain.encode("ascii"), PreparedKey(key.dkimpy_private_key()),
                              authserv_id.encode("ascii"), include_headers=include,
                              timestamp=timestamp, logger=LIBRARY_LOG)
    except (dkim.DKIMException, OSError, ValueError) as err:
        raise SealError(f"cannot ARC-seal: {err}") from None
    if not lines:
        raise SealError("cannot ARC-seal: dkimpy found no Authentication-Results of ours")
    return b"".join(lines)
