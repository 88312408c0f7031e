"""DMARC (RFC 7489): policy discovery, identifier alignment and the disposition to apply.

Everything but ``discover`` is a pure function of its arguments. The Organizational Domain
(RFC 7489 §3.2) comes from the Public Suffix List as shipped by the ``publicsuffixlist``
package (released with each upstream PSL change), so ``mail.sender.co.uk`` and
``sender.co.uk`` align while ``a.co.uk`` and ``b.co.uk`` do not.

What is not done: aggregate and failure reports (rua/ruf) are not sent, and ARC results do not
override a DMARC failure (RFC 8617 §7.2 leaves that to local policy; ours is not to).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.asyncresolver
from publicsuffixlist import PublicSuffixList

from server.addresses import AddressError, normalize_domain
from server.inbound.dkimcheck import Signature
from server.inbound.dnsfunc import TempDNSError, txt_records
from server.inbound.spf import SPFResult

_PSL = PublicSuffixList()  # parses the bundled list once (~50 ms)

POLICIES = ("none", "quarantine", "reject")
# RFC 7489 §6.6.4: a message not selected by pct= gets the next policy down.
_NEXT_LOWER = {"reject": "quarantine", "quarantine": "none", "none": "none"}

_VERSION = re.compile(rb"^\s*v\s*=\s*DMARC1\s*(;|$)")


class RecordError(ValueError):
    """A DMARC record that cannot be applied (RFC 7489 §6.6.3: no DMARC processing)."""


@dataclass(frozen=True, slots=True)
class Record:
    p: str
    sp: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100

    def describe(self) -> str:
        return f"p={self.p} sp={self.sp or self.p} pct={self.pct}"


@dataclass(frozen=True, slots=True)
class Policy:
    """What discovery found for one From domain."""

    from_domain: str
    record: Record | None = None
    found_at: str = ""       # the domain whose _dmarc record applies
    error: str = ""          # a record that exists but cannot be applied (permerror)
    temporary: str = ""      # the lookup failed (temperror)


@dataclass(frozen=True, slots=True)
class DMARCResult:
    result: str           # pass, fail, none, temperror, permerror
    from_domain: str
    requested: str = ""   # the p= (or sp=) that applies, "" without a record
    disposition: str = "none"  # what the domain asks us to do with this message after pct=
    reason: str = ""
    record: Record | None = field(default=None, compare=False)

    def comment(self) -> str:
        if self.record is None:
            return ""
        return f"{self.record.describe()} dis={self.disposition}"


def org_domain(domain: str) -> str:
    """The Organizational Domain (RFC 7489 §3.2): the public suffix plus one label; a name
    that is itself a public suffix is its own."""
    domain = domain.lower().rstrip(".")
    return _PSL.privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """RFC 7489 §3.1: strict means the same name, relaxed the same Organizational Domain."""
    a, b = identifier.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not a or not b:
        return False
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


def parse_record(text: bytes) -> Record:
    """A DMARC record (RFC 7489 §6.3, §6.4). Unknown tags are ignored (§6.3); a missing or
    invalid p= or sp= is p=none when there is a rua= (§6.6.3) and an unusable record
    otherwise; malformed adkim/aspf/pct fall back to their defaults."""
    if not _VERSION.match(text):
        raise RecordError("not a DMARC1 record")
    tags: dict[str, str] = {}
    for part in text.decode("ascii", "replace").split(";")[1:]:
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip())
    p, sp = tags.get("p", "").lower(), tags.get("sp", "").lower() or None
    if p not in POLICIES or (sp is not None and sp not in POLICIES):
        if "mailto:" not in tags.get("rua", "").lower():
            raise RecordError(f"invalid policy p={p or '(missing)'}"
                              + (f" sp={sp}" if sp else ""))
        p, sp = "none", None
    pct = tags.get("pct", "100")
    return Record(
        p=p, sp=sp,
        adkim="s" if tags.get("adkim", "r").lower() == "s" else "r",
        aspf="s" if tags.get("aspf", "r").lower() == "s" else "r",
        pct=min(int(pct), 100) if pct.isdigit() else 100)


def from_domains(values: Sequence[list[str]]) -> tuple[list[str], str]:
    """The distinct author domains (RFC 7489 §6.6.1), normalised, from the domain lists of
    every From field; and an error text when there is none to evaluate."""
    domains: list[str] = []
    for field_domains in values:
        for raw in field_domains:
            try:
                domain = normalize_domain(raw) if raw else ""
            except AddressError:
                domain = ""
            if domain and domain not in domains:
                domains.append(domain)
    if not values:
        return [], "no From field"
    if not domains:
        return [], "no domain in From"
    return domains, ""


def _pick(records: list[bytes]) -> list[bytes]:
    return [r for r in records if _VERSION.match(r)]


async def discover(resolver: dns.asyncresolver.Resolver, from_domain: str) -> Policy:
    """RFC 7489 §6.6.3: the record at _dmarc.<From domain>, else at _dmarc.<Organizational
    Domain>. A lookup that gets no answer gives a Policy with ``temporary`` set."""
    org = org_domain(from_domain)
    for domain in dict.fromkeys([from_domain, org]):
        try:
            found = _pick(await txt_records(resolver, f"_dmarc.{domain}"))
        except TempDNSError as err:
            return Policy(from_domain, found_at=domain, temporary=f"policy lookup: {err}")
        if len(found) > 1:
            # §6.6.3 step 5: several records end discovery without a policy.
            return Policy(from_domain, found_at=domain, error="several DMARC records")
        if found:
            try:
                return Policy(from_domain, parse_record(found[0]), found_at=domain)
            except RecordError as err:
                return Policy(from_domain, found_at=domain, error=str(err))
    return Policy(from_domain)


def evaluate(policy: Policy, spf: SPFResult | None, signatures: Sequence[Signature],
             roll: int) -> DMARCResult:
    """The DMARC result for one From domain (RFC 7489 §6.6.2, §6.6.4).

    ``spf`` is the result for the identity DMARC uses: MAIL FROM, or HELO for the null
    reverse-path (RFC 7208 §2.4). ``roll`` is a number in 0..99 for pct= sampling.
    A failure that a temperror of an identifier that could have aligned might have turned
    into a pass is reported as temperror: never a fail that might be wrong.
    """
    domain = policy.from_domain
    if policy.temporary:
        return DMARCResult("temperror", domain, reason=policy.temporary)
    if policy.error:
        return DMARCResult("permerror", domain, reason=policy.error)
    rec = policy.record
    if rec is None:
        return DMARCResult("none", domain, reason="no DMARC record")
    requested = rec.p if policy.found_at == domain else (rec.sp or rec.p)

    def result(res: str, reason: str, disposition: str = "none") -> DMARCResult:
        return DMARCResult(res, domain, requested, disposition, reason, rec)

    for sig in signatures:
        if sig.result == "pass" and aligned(sig.domain, domain, rec.adkim):
            return result("pass", f"DKIM aligned ({sig.domain})")
    if spf is not None and spf.result == "pass" and aligned(spf.domain, domain, rec.aspf):
        return result("pass", f"SPF aligned ({spf.domain})")
    unsure = [f"DKIM {s.domain}: {s.reason}" for s in signatures
              if s.result == "temperror" and aligned(s.domain, domain, rec.adkim)]
    if spf is not None and spf.result == "temperror" and aligned(spf.domain, domain, rec.aspf):
        unsure.append(f"SPF {spf.domain}: {spf.reason}")
    if unsure:
        return result("temperror", "; ".join(unsure))
    disposition = requested if roll < rec.pct else _NEXT_LOWER[requested]
    return result("fail", _why_not(domain, spf, signatures), disposition)


def _why_not(domain: str, spf: SPFResult | None, signatures: Sequence[Signature]) -> str:
    """The reason text of a failure: what each identifier said."""
    if spf is None:
        spf_text = "no SPF identity"
    elif spf.result == "pass":
        spf_text = f"SPF passed for {spf.domain}, not aligned with {domain}"
    else:
        spf_text = f"SPF {spf.result} for {spf.domain}"
    if not signatures:
        dkim_text = "no DKIM signature"
    else:
        passed = [s.domain for s in signatures if s.result == "pass"]
        dkim_text = (f"DKIM passed for {', '.join(passed)}, not aligned" if passed
                     else "no valid DKIM signature")
    return f"{spf_text}; {dkim_text}"
