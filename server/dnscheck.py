"""Checks the records of ``server/dnsrecords.py`` against live DNS, each with a verdict and
a plain-language fix for the owner.

Verdicts: ``ok``; ``missing`` (nothing there); ``mismatch`` (something else there);
``error`` (the lookup failed — a timeout or SERVFAIL says nothing about the record, so it is
never turned into a verdict on it — or the published data is self-contradictory, such as two
SPF records); ``skipped`` (the record does not apply: TLSA in a zone that is not
DNSSEC-signed). Lookups run concurrently and each name/type is asked once.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import re
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.resolver

from server.dnsrecords import Record

STATUSES = ("ok", "missing", "mismatch", "error", "skipped")


@dataclass(frozen=True, slots=True)
class Check:
    record: Record
    status: str
    found: list[str] = field(default_factory=list)
    fix: str = ""   # what to change; empty when nothing needs doing
    note: str = ""  # said even when ok, e.g. an SPF record that differs but authorises us

    @property
    def breaks_mail(self) -> bool:
        """Whether this result stops mail: a required record not ok, or a wrong TLSA record in
        a signed zone (DANE senders then refuse to deliver, RFC 7672 §2.2)."""
        if self.record.rtype == "TLSA":
            return self.status == "mismatch"
        return self.record.required and self.status != "ok"


@dataclass(frozen=True, slots=True)
class _Answer:
    values: list[str]          # rdata text; TXT joined into its logical value
    signed: bool = False       # the resolver validated it (AD flag, RFC 4035 §3.2.3)
    error: str | None = None   # the lookup failed; values says nothing then


class _Lookups:
    """Each (name, type) looked up once, however many checks need it."""

    def __init__(self, resolver: dns.asyncresolver.Resolver):
        # RFC 6840 §5.7: a query with AD set asks a validating resolver to say whether the
        # answer is authenticated. A copy, so the caller's resolver is not changed.
        self.resolver = copy.copy(resolver)
        self.resolver.flags = (resolver.flags or dns.flags.RD) | dns.flags.AD
        self._tasks: dict[tuple[str, str], asyncio.Task] = {}

    def get(self, name: str, rtype: str) -> asyncio.Task:
        key = (name.lower(), rtype)
        if key not in self._tasks:
            self._tasks[key] = asyncio.ensure_future(self._lookup(*key))
        return self._tasks[key]

    async def _lookup(self, name: str, rtype: str) -> _Answer:
        try:
            answer = await self.resolver.resolve(name + ".", rtype, raise_on_no_answer=False,
                                                 search=False)
        except dns.resolver.NXDOMAIN as err:
            return _Answer([], signed=any(_ad(r) for r in err.responses().values()))
        except dns.resolver.NoNameservers as err:  # SERVFAIL, REFUSED from every server
            rcodes = sorted(set(re.findall(r"answered (\w+)", str(err)))) or ["no answer"]
            return _Answer([], error=f"the DNS server answered {'/'.join(rcodes)} for "
                                     f"{name} {rtype}")
        except dns.exception.Timeout:
            return _Answer([], error=f"the lookup of {name} {rtype} timed out")
        except (dns.exception.DNSException, OSError) as err:
            return _Answer([], error=f"the lookup of {name} {rtype} failed: {_first_line(err)}")
        values = []
        if answer.rrset is not None:
            for rd in answer.rrset:
                if rtype == "TXT":
                    values.append(b"".join(rd.strings).decode("utf-8", "replace"))
                else:
                    values.append(rd.to_text())
        return _Answer(values, signed=_ad(answer.response))


def _ad(response) -> bool:
    return response is not None and bool(response.flags & dns.flags.AD)


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


async def check_records(records: list[Record],
                        resolver: dns.asyncresolver.Resolver) -> list[Check]:
    """One Check per record, in the same order."""
    lookups = _Lookups(resolver)
    return list(await asyncio.gather(*(_check(r, lookups) for r in records)))


async def _check(rec: Record, lookups: _Lookups) -> Check:
    if rec.rtype == "CNAME":
        return await _check_cname(rec, lookups)
    got = await lookups.get(rec.name, rec.rtype)
    if rec.rtype == "TLSA":
        return _check_tlsa(rec, got)
    if got.error:
        return Check(rec, "error", [], f"Could not check: {got.error}. Try again later; if it "
                     "persists, ask your DNS provider.")
    if rec.rtype == "TXT":
        if "._domainkey." in rec.name:
            return _check_dkim(rec, got.values)
        return await _check_txt(rec, got.values, lookups)
    check = {"MX": _check_mx, "A": _check_address, "AAAA": _check_address, "SRV": _check_srv,
             "CAA": _check_caa}[rec.rtype]
    return check(rec, got.values)


def _add(rec: Record) -> str:
    # No final full stop: it would read as part of a value such as a DKIM key.
    return f"Add a {rec.rtype} record at {rec.name} with the value {rec.display_value()}"


def _norm_name(text: str) -> str:
    return text.lower().rstrip(".")


def _check_mx(rec: Record, found: list[str]) -> Check:
    ours = _norm_name(rec.value.split()[1])
    targets = [_norm_name(v.split()[1]) for v in found]
    if not found:
        return Check(rec, "missing", found, f"Add an MX record at {rec.name} pointing to "
                     f"{ours} (preference 10).")
    others = sorted(set(t for t in targets if t != ours))
    if targets == [""]:  # RFC 7505 null MX: "0 ."
        return Check(rec, "mismatch", found, f"{rec.name} says it accepts no mail (a null MX); "
                     f"replace it with an MX record pointing to {ours}.")
    if ours not in targets:
        return Check(rec, "mismatch", found, f"Your MX points to {', '.join(others)}; change "
                     f"it to {ours}.")
    if others:
        return Check(rec, "mismatch", found, f"Your MX also lists {', '.join(others)}; remove "
                     f"it so that all mail for {rec.name} comes to {ours}.")
    return Check(rec, "ok", found)


def _check_address(rec: Record, found: list[str]) -> Check:
    if not found:
        return Check(rec, "missing", found, _add(rec))
    if rec.value is None:
        return Check(rec, "ok", found, note="mailstead does not know its public address "
                     "([server] public_ipv4), so it cannot tell whether this one is right.")
    ours = ipaddress.ip_address(rec.value)
    addrs = {ipaddress.ip_address(v) for v in found}
    if ours not in addrs:
        return Check(rec, "mismatch", found, f"{rec.name} points to {', '.join(found)}; change "
                     f"it to {rec.value}.")
    if len(addrs) > 1:
        extra = ", ".join(str(a) for a in sorted(addrs) if a != ours)
        return Check(rec, "mismatch", found, f"{rec.name} also points to {extra}; remove it, "
                     "or some mail goes there.")
    return Check(rec, "ok", found)


def _check_srv(rec: Record, found: list[str]) -> Check:
    if not found:
        return Check(rec, "missing", found, _add(rec))
    _, _, port, target = rec.value.split()
    # Priority and weight only order several servers; port and target are what apps use.
    if any(v.split()[2:] == [port, target] or
           (v.split()[2] == port and _norm_name(v.split()[3]) == _norm_name(target))
           for v in found):
        return Check(rec, "ok", found)
    return Check(rec, "mismatch", found, f"Change the SRV record at {rec.name} to "
                 f"{rec.value}")


def _caa_issuers(found: list[str]) -> list[str]:
    out = []
    for v in found:
        parts = v.split(None, 2)
        if len(parts) == 3 and parts[1].lower() == "issue":
            # RFC 8659 §4.2: the issuer domain comes before any ";" parameters.
            out.append(parts[2].strip('"').split(";")[0].strip().lower())
    return out


def _check_caa(rec: Record, found: list[str]) -> Check:
    if not found:
        fix = f"No CAA record: any CA may issue certificates for {rec.name}."
        return Check(rec, "missing", found, fix if rec.value is None else f"{fix} {_add(rec)}")
    issuers = _caa_issuers(found)
    if rec.value is None:
        return Check(rec, "ok", found, note="mailstead does not know your CA's CAA domain; "
                     "make sure it is among these.")
    ours = _caa_issuers([rec.value])[0]
    if ours in issuers:
        return Check(rec, "ok", found)
    return Check(rec, "mismatch", found, f"Your CAA records do not allow {ours}, so the "
                 f"certificate cannot be renewed; add a CAA record at {rec.name} with the "
                 f"value {rec.value}.")


def _check_tlsa(rec: Record, got: _Answer) -> Check:
    if got.error:
        return Check(rec, "error", [], f"Could not check: {got.error}.")
    if not got.signed:
        # Without DNSSEC senders ignore TLSA (RFC 7672 §2.2), so its absence costs nothing.
        return Check(rec, "skipped", got.values, "Your zone is not DNSSEC-signed (or the "
                     "resolver does not validate), so DANE does not apply; sign the zone "
                     "first if you want it.")
    if rec.value is None:
        return Check(rec, "skipped", got.values, f"Publish this record {rec.condition}.")
    want = rec.value.lower().split()
    if any(v.lower().split() == want for v in got.values):
        return Check(rec, "ok", got.values)
    if not got.values:
        return Check(rec, "missing", got.values, _add(rec))
    return Check(rec, "mismatch", got.values, f"The TLSA record at {rec.name} does not match "
                 "this server's key, so senders that check DANE cannot deliver to you; "
                 f"replace it with {rec.value}.")


def _tags(value: str) -> dict[str, str]:
    out = {}
    for part in value.split(";"):
        key, sep, val = part.partition("=")
        if sep:
            out.setdefault(key.strip().lower(), re.sub(r"\s+", "", val))
    return out


def _check_dkim(rec: Record, found: list[str]) -> Check:
    dkim = [v for v in found if "p" in _tags(v)]  # v=DKIM1 is optional (RFC 6376 §3.6.1)
    if not dkim:
        return Check(rec, "missing", found, _add(rec))
    want = _tags(rec.value)["p"]
    if len(dkim) > 1:
        return Check(rec, "mismatch", found, f"There are {len(dkim)} DKIM records at "
                     f"{rec.name}; keep only the one with the value {rec.value}.")
    if _tags(dkim[0]).get("p") != want:
        return Check(rec, "mismatch", found, f"The DKIM record at {rec.name} has a different "
                     f"key; replace its value with {rec.value}.")
    return Check(rec, "ok", found)


_KINDS = {"v=spf1": "SPF", "v=dmarc1": "DMARC", "v=stsv1": "MTA-STS", "v=tlsrptv1": "TLS-RPT"}


def _norm_txt(value: str) -> str:
    return " ".join(value.replace(";", "; ").split()).rstrip(";").lower()


async def _check_txt(rec: Record, found: list[str], lookups: _Lookups) -> Check:
    tag = rec.value.split(None, 1)[0].rstrip(";").lower()
    kind = _KINDS.get(tag, "TXT")
    # The version tag must be followed by a space, ";" or the end: "v=spf10" is not SPF.
    mine = [v for v in found if re.match(re.escape(tag) + r"(\s|;|$)", v.strip(), re.I)]
    if not mine:
        return Check(rec, "missing", found, f"Add a TXT record at {rec.name} with the value "
                     f"{rec.value}")
    if len(mine) > 1:
        # RFC 7208 §4.5 (permerror), RFC 7489 §6.6.3, RFC 8461 §3.1, RFC 8460 §3: with more
        # than one record, receivers act as if there were none.
        return Check(rec, "error", found, f"There are {len(mine)} {kind} records at "
                     f"{rec.name}; merge them into one (suggested: {rec.value}), receivers "
                     "ignore them all.")
    if _norm_txt(mine[0]) == _norm_txt(rec.value):
        return Check(rec, "ok", found)
    if kind == "SPF" and await _spf_allows_us(rec, mine[0], lookups):
        return Check(rec, "ok", found, note="Your SPF record differs from the suggested one "
                     "but allows this server to send.")
    return Check(rec, "mismatch", found, f"Change the {kind} record at {rec.name} from "
                 f"{mine[0]} to {rec.value}")


async def _spf_allows_us(rec: Record, spf: str, lookups: _Lookups) -> bool:
    """Whether the SPF record names this server by a mechanism we can judge without evaluating
    it: the one the suggested record uses ("mx" for the domain, "a" for the host), or our
    address. Anything else (include:, redirect=) is left to mismatch rather than guessed."""
    suggested = rec.value.split()[1]  # "mx" or "a"
    host = None
    for term in spf.split()[1:]:
        term = term.lower()
        if term[0] == "+":
            term = term[1:]
        elif term[0] in "-~?":
            continue  # qualified as fail/softfail/neutral: does not allow anyone
        if term in (suggested, f"{suggested}:{rec.name}"):
            return True
        if term.startswith(("ip4:", "ip6:")):
            host = host or await _host_addresses(rec, lookups)
            try:
                net = ipaddress.ip_network(term[4:], strict=False)
            except ValueError:
                continue
            if any(a in net for a in host):
                return True
    return False


async def _host_addresses(rec: Record, lookups: _Lookups) -> set:
    """The addresses DNS gives our server: those of the host itself for its own SPF record
    ("a"), those of the domain's MX targets for the domain's ("mx")."""
    names = [rec.name]
    if rec.value.split()[1] == "mx":
        mx = await lookups.get(rec.name, "MX")
        names = [_norm_name(v.split()[1]) for v in mx.values]
    addrs = set()
    for name in names:
        for rtype in ("A", "AAAA"):
            for v in (await lookups.get(name, rtype)).values:
                addrs.add(ipaddress.ip_address(v))
    return addrs


async def _check_cname(rec: Record, lookups: _Lookups) -> Check:
    target = _norm_name(rec.value)
    got = await lookups.get(rec.name, "CNAME")
    if got.error:
        return Check(rec, "error", [], f"Could not check: {got.error}.")
    if got.values:
        if _norm_name(got.values[0]) == target:
            return Check(rec, "ok", got.values)
        return Check(rec, "mismatch", got.values, f"{rec.name} points to "
                     f"{_norm_name(got.values[0])}; change it to {target}.")
    # An address record with the host's address works as well as the CNAME.
    mine, theirs = await asyncio.gather(lookups.get(rec.name, "A"), lookups.get(target, "A"))
    if mine.error:
        return Check(rec, "error", [], f"Could not check: {mine.error}.")
    if not mine.values:
        return Check(rec, "missing", [], f"Add a CNAME record at {rec.name} pointing to "
                     f"{target}.")
    if theirs.values and set(mine.values) <= set(theirs.values):
        return Check(rec, "ok", mine.values, note=f"An A record with {target}'s address "
                     "works too.")
    return Check(rec, "mismatch", mine.values, f"{rec.name} points to "
                 f"{', '.join(mine.values)}, not to {target}; replace it with a CNAME record "
                 f"pointing to {target}.")
