"""One verdict per received message: SPF, DKIM, ARC and DMARC together, the
``Authentication-Results`` field that records them, and what the MX does with the message.

    verdict = await evaluate(data, ip=..., helo=..., mail_from=..., config=config,
                             resolver=resolver, executor=executor)
    verdict.action   # "accept" | "junk" | "reject" | "tempfail"
    verdict.header   # b"Authentication-Results: mail.example.com;\\r\\n\\tspf=pass ..."

The checks run concurrently: DNS on the event loop through ``resolver`` (``[dns]``), pyspf
and the RSA/Ed25519 arithmetic in ``executor``. The action (RFC 7489 §6.6.4, §6.7):

* DMARC fail with p=reject (after pct=): ``reject`` (550 5.7.1), or ``junk`` with
  ``[inbound] dmarc_reject = "junk"``;
* DMARC fail with p=quarantine: ``junk``;
* ``tempfail`` (451 4.4.3) when the answer depends on a lookup that failed: the DMARC policy
  itself, or an SPF/DKIM identifier that could have aligned under a quarantine/reject
  policy. A temperror that cannot change the outcome (say, SPF of a domain without DMARC)
  is only written into the header: deferring that mail would gain nothing;
* anything else: ``accept``. SPF or DKIM failures alone never refuse mail: forwarding breaks
  SPF and mailing lists break DKIM, which is what DMARC's alignment and ARC are for.
"""

from __future__ import annotations

import asyncio
import logging
import random
from concurrent.futures import Executor
from dataclasses import dataclass

import dns.asyncresolver

from server.config import Config
from server.inbound import arc, dkimcheck, dmarc, headers, spf
from server.inbound.arc import ARCResult
from server.inbound.authresults import Result, build
from server.inbound.dkimcheck import Signature
from server.inbound.dmarc import DMARCResult
from server.inbound.spf import SPFResult

log = logging.getLogger("mailstead.inbound")

ACTIONS = ("accept", "junk", "tempfail", "reject")  # in rising order of precedence


@dataclass(frozen=True, slots=True)
class Verdict:
    header: bytes                  # the Authentication-Results field, CRLF-terminated
    action: str                    # one of ACTIONS
    reason: str                    # why, for the SMTP reply and the log ("" for accept)
    spf: SPFResult | None = None
    helo: SPFResult | None = None
    dkim: tuple[Signature, ...] = ()
    dmarc: tuple[DMARCResult, ...] = ()
    arc: ARCResult | None = None
    policy_domain: str = ""        # the From domain whose policy decided the action

    def summary(self) -> str:
        """One log-line fragment: ``spf=pass dkim=pass dmarc=pass arc=none``."""
        parts = []
        if self.spf:
            parts.append(f"spf={self.spf.result}")
        if self.helo:
            parts.append(f"helo={self.helo.result}")
        parts += [f"dkim={s.result}:{s.domain}" for s in self.dkim]
        parts += [f"dmarc={d.result}:{d.from_domain}" for d in self.dmarc]
        if self.arc:
            parts.append(f"arc={self.arc.result}")
        return " ".join(parts) or "no checks"


# --- the Authentication-Results resinfo of each result ---

def spf_results(mail_from: SPFResult | None, helo: SPFResult | None) -> list[Result]:
    out = []
    if mail_from:
        out.append(Result("spf", mail_from.result, (("smtp.mailfrom", mail_from.domain),),
                          reason=_reason(mail_from.result, mail_from.reason)))
    # A HELO name without SPF is the rule (RFC 7208 §2.3 checks it anyway): its "none" is
    # written only when it is the identity DMARC uses (the null reverse-path).
    if helo and (helo.result != "none" or mail_from is None):
        out.append(Result("spf", helo.result, (("smtp.helo", helo.domain),),
                          reason=_reason(helo.result, helo.reason)))
    return out


def _reason(result: str, text: str) -> str:
    # pyspf explains passes and "none" too ("sender SPF authorized"); only failures need one.
    return "" if result in ("pass", "none") else text


def dkim_results(signatures: list[Signature]) -> list[Result]:
    if not signatures:
        return [Result("dkim", "none")]
    return [Result("dkim", s.result, (("header.d", s.domain), ("header.s", s.selector),
                                      ("header.a", s.algorithm), ("header.b", s.b)),
                   reason=s.reason)
            for s in signatures]


def dmarc_results(results: list[DMARCResult], error: str) -> list[Result]:
    if error:
        return [Result("dmarc", "permerror", reason=error)]
    return [Result("dmarc", r.result, (("header.from", r.from_domain),),
                   reason="" if r.result in ("pass", "none") else r.reason,
                   comment=r.comment())
            for r in results]


def arc_results(result: ARCResult) -> list[Result]:
    comment = f"i={result.instances} d={result.sealer}" if result.instances else ""
    return [Result("arc", result.result, reason=result.reason, comment=comment)]


# --- what to do ---

def decide(results: list[DMARCResult], reject_mode: str) -> tuple[str, str, str]:
    """(action, reason, deciding From domain) from the DMARC results of each From domain."""
    best = ("accept", "", "")
    for r in results:
        if r.result == "fail" and r.disposition == "reject":
            action = "reject" if reject_mode == "reject" else "junk"
            why = f"DMARC policy of {r.from_domain} is reject: {r.reason}"
        elif r.result == "fail" and r.disposition == "quarantine":
            action, why = "junk", f"DMARC policy of {r.from_domain} is quarantine: {r.reason}"
        elif r.result == "temperror" and (r.record is None
                                          or r.requested in ("quarantine", "reject")):
            action, why = "tempfail", f"DMARC of {r.from_domain}: {r.reason}"
        else:
            continue
        if ACTIONS.index(action) > ACTIONS.index(best[0]):
            best = (action, why, r.from_domain)
    return best


async def _guarded(coro, fallback, what: str):
    """A check that crashes (a library bug on odd input) gives a temperror, logged with its
    traceback: never a verdict, never a lost message."""
    try:
        return await coro
    except Exception:
        log.exception("%s check failed", what)
        return fallback


async def evaluate(message: bytes, *, ip: str, helo: str, mail_from: str, config: Config,
                   resolver: dns.asyncresolver.Resolver, executor: Executor,
                   roll: int | None = None) -> Verdict:
    """The verdict on ``message`` as received (before our trace fields are added).

    ``mail_from`` is the normalised reverse-path ("" for <>); ``roll`` (0..99) picks whether
    a pct= policy applies, random when not given.
    """
    inbound = config.inbound
    fields, _ = headers.split(message)
    from_values = [headers.address_domains(v) for v in headers.values(fields, b"from")]
    domains, from_error = dmarc.from_domains(from_values)
    internal = "internal error (logged)"

    async def skipped(value):
        return value

    if inbound.spf or inbound.dmarc:
        failed = SPFResult("mailfrom", mail_from.rpartition("@")[2], "temperror", internal)
        spf_job = _guarded(
            spf.check_both(resolver, executor, ip=ip, helo=helo, mail_from=mail_from),
            (failed if mail_from else None, None), "SPF")
    else:
        spf_job = skipped((None, None))
    if inbound.dkim or inbound.dmarc:
        dkim_job = _guarded(dkimcheck.check(message, resolver, executor),
                            [Signature("temperror", "", "", "", "", internal)], "DKIM")
    else:
        dkim_job = skipped([])
    if inbound.arc:
        arc_job = _guarded(arc.check(message, resolver, executor),
                           ARCResult("temperror", reason=internal), "ARC")
    else:
        arc_job = skipped(None)
    if inbound.dmarc:
        dmarc_job = asyncio.gather(*(dmarc.discover(resolver, d) for d in domains))
    else:
        dmarc_job = skipped([])
    (spf_from, spf_helo), signatures, arc_result, policies = await asyncio.gather(
        spf_job, dkim_job, arc_job, dmarc_job)

    dmarc_list: list[DMARCResult] = []
    if inbound.dmarc:
        identity = spf_from if mail_from else spf_helo
        pick = random.randrange(100) if roll is None else roll
        dmarc_list = [dmarc.evaluate(p, identity, signatures, pick) for p in policies]

    results: list[Result] = []
    if inbound.spf:
        results += spf_results(spf_from, spf_helo)
    if inbound.dkim:
        results += dkim_results(signatures)
    if inbound.dmarc:
        results += dmarc_results(dmarc_list, from_error)
    if inbound.arc:
        results += arc_results(arc_result)
    action, reason, domain = decide(dmarc_list, inbound.dmarc_reject)
    return Verdict(
        header=build(config.server.hostname, results), action=action, reason=reason,
        spf=spf_from if inbound.spf else None, helo=spf_helo if inbound.spf else None,
        dkim=tuple(signatures) if inbound.dkim else (), dmarc=tuple(dmarc_list),
        arc=arc_result if inbound.arc else None, policy_domain=domain)
