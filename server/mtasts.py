"""MTA-STS (RFC 8461): which MX hosts of a domain may receive its mail, and whether verified TLS
to them is mandatory. The delivery workers call ``await MTASTS.policy(domain)`` before
connecting: mode "enforce" means only MX hosts the policy ``matches()``, only over verified TLS;
"testing" means deliver anyway but log; "none" or None means no MTA-STS.

The TXT record is looked up on every call (one small query); the policy is fetched over HTTPS
only when the TXT id changes or the cached copy expires or is a day old. Policies are kept in
memory and in one JSON file per domain, so a restart does not forget them: a sender without a
cached policy is exactly what a downgrade attacker needs (RFC 8461 §10.2).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.resolver

from maildir.safeio import atomic_write, make_private_dir
from server.addresses import normalize_domain

log = logging.getLogger("mailstead.mtasts")

# RFC 8461 §3.2: max_age is at most one year; larger values are capped, not refused.
MAX_AGE_CAP = 31557600
# RFC 8461 §3.3 suggests 64 KiB as the largest policy body; the head gets its own small limit.
MAX_BODY = 64 * 1024
MAX_HEAD = 16 * 1024
# Chunk-size lines around 64 KiB of data: room for ordinary framing, not for a trickle attack.
MAX_CHUNKED_WIRE = 2 * MAX_BODY
# RFC 8461 §3.3: after a failed fetch, wait at least five minutes per id before trying again,
# so a broken policy host is not hammered by every queued message.
FETCH_BACKOFF = 300.0
# RFC 8461 §3.3: refresh cached policies before they expire, about once a day. Done on use,
# in the delivery path; a failed refresh keeps the cached policy.
REFRESH_AFTER = 86400.0
# One dead address (blackholed IPv6) must not use the whole fetch budget.
CONNECT_TIMEOUT = 5.0
WELL_KNOWN = "/.well-known/mta-sts.txt"

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")  # RFC 8461 §3.1/§3.2 ext-name
_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_TXT_VALUE = re.compile(r"[!-:<>-~]+")  # RFC 8461 §3.1: VCHAR except "=" and ";"
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_MX = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})+")
_STATUS = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2})(?: [\t -~\x80-\xff]*)?")
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t -~\x80-\xff]*?)[ \t]*")
_CHUNK = re.compile(rb"([0-9A-Fa-f]{1,8})[ \t]*(?:;[\t -~\x80-\xff]*)?")


class PolicyError(Exception):
    """No usable policy: the message says why (syntax, HTTP, TLS or DNS)."""


@dataclass(frozen=True)
class Policy:
    id: str
    """The id of the TXT record the policy was fetched for."""
    mode: str
    """"enforce", "testing" or "none"."""
    mx: tuple[str, ...]
    """Patterns, lower case without trailing dot; "*.example.com" is a one-label wildcard."""
    max_age: int
    fetched: float
    """time.time() of the fetch."""

    def matches(self, mx_host: str) -> bool:
        """RFC 8461 §4.1: an exact name, or "*.x" for exactly one more left-most label."""
        host = mx_host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, _, parent = host.partition(".")
                if label and parent == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def expired(self, now: float) -> bool:
        return now >= self.fetched + self.max_age


def parse_policy(text: str, policy_id: str, fetched: float) -> Policy:
    """RFC 8461 §3.2: "key: value" lines (LF or CRLF); unknown keys ignored."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for n, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r").strip(" \t")
        if not line:
            continue  # blank lines (a trailing newline above all) carry nothing
        key, colon, value = line.partition(":")
        if not colon or not _KEY.fullmatch(key):
            raise PolicyError(f"line {n}: expected 'key: value', got {line[:40]!r}")
        value = value.strip(" \t")
        if key == "mx":
            pattern = value.lower().removesuffix(".")
            if not _MX.fullmatch(pattern):
                raise PolicyError(f"line {n}: invalid mx {value[:64]!r}")
            mx.append(pattern)
        else:
            fields.setdefault(key, value)  # RFC 8461 §3.2: of a repeated field the first counts
    for key in ("version", "mode", "max_age"):
        if key not in fields:
            raise PolicyError(f"missing {key}")
    if fields["version"] != "STSv1":
        raise PolicyError(f"unsupported version {fields['version'][:20]!r}")
    mode = fields["mode"]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"invalid mode {mode[:20]!r}")
    if not re.fullmatch(r"[0-9]{1,10}", fields["max_age"]):
        raise PolicyError(f"invalid max_age {fields['max_age'][:20]!r}")
    if not mx and mode != "none":
        raise PolicyError(f"no mx in a {mode} policy")
    return Policy(policy_id, mode, tuple(mx), min(int(fields["max_age"]), MAX_AGE_CAP), fetched)


def parse_txt(record: str) -> str:
    """The id of an RFC 8461 §3.1 record "v=STSv1; id=...; [ext=value; ...]"."""
    fields = [f.strip(" \t") for f in record.split(";")]
    if fields[-1] == "":
        fields.pop()  # a trailing separator is allowed
    if fields[0] != "v=STSv1" or len(fields) < 2:
        raise PolicyError(f"invalid TXT record {record[:80]!r}")
    found = None
    for field in fields[1:]:
        key, eq, value = field.partition("=")
        if not eq or not _KEY.fullmatch(key) or not _TXT_VALUE.fullmatch(value):
            raise PolicyError(f"invalid TXT field {field[:40]!r}")
        if key == "id" and found is None:
            if not _TXT_ID.fullmatch(value):
                raise PolicyError(f"invalid id {value[:40]!r}")
            found = value
    if found is None:
        raise PolicyError("TXT record without id")
    return found


def parse_head(buf: bytes, eof: bool) -> tuple[int, dict[str, str], bytes] | None:
    """Status, headers (lower-case names) and the bytes after them; None = need more data."""
    end = buf.find(b"\r\n\r\n")
    if end < 0 or end > MAX_HEAD:
        if len(buf) > MAX_HEAD:
            raise PolicyError("HTTP response head too large")
        if eof:
            raise PolicyError("connection closed before the end of the HTTP headers")
        return None
    status_line, *lines = buf[:end].split(b"\r\n")
    status = _STATUS.fullmatch(status_line)
    if not status:
        raise PolicyError(f"invalid HTTP status line {status_line[:40]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        # Folded lines, a space before the colon and bare CR/LF are refused (RFC 9112 §5):
        # the ways two parsers come to disagree about where a header or the body ends.
        field = _FIELD.fullmatch(line)
        if not field:
            raise PolicyError(f"invalid HTTP header line {line[:40]!r}")
        name, value = field[1].decode().lower(), field[2].decode("latin-1")
        if name in headers and name in ("content-length", "transfer-encoding", "content-type"):
            raise PolicyError(f"repeated {name} header")
        headers.setdefault(name, value)
    return int(status[1]), headers, buf[end + 4:]


def parse_body(headers: dict[str, str], buf: bytes, eof: bool) -> bytes | None:
    """The body from Content-Length, chunked or read-to-close framing; None = need more."""
    te, length = headers.get("transfer-encoding"), headers.get("content-length")
    if headers.get("content-encoding", "identity").lower() != "identity":
        raise PolicyError("unsupported Content-Encoding")  # we never asked for one
    if te is not None:
        if length is not None:  # RFC 9112 §6.3: both at once is a smuggling attempt
            raise PolicyError("both Transfer-Encoding and Content-Length")
        if te.lower() != "chunked":
            raise PolicyError(f"unsupported Transfer-Encoding {te[:20]!r}")
        return _dechunk(buf, eof)
    if length is not None:
        if not re.fullmatch(r"[0-9]{1,10}", length):
            raise PolicyError(f"invalid Content-Length {length[:20]!r}")
        if int(length) > MAX_BODY:
            raise PolicyError(f"policy larger than {MAX_BODY} bytes")
        if len(buf) >= int(length):
            return buf[:int(length)]
        if eof:
            raise PolicyError("connection closed before the end of the body")
        return None
    if len(buf) > MAX_BODY:
        raise PolicyError(f"policy larger than {MAX_BODY} bytes")
    return buf if eof else None


def _dechunk(buf: bytes, eof: bool) -> bytes | None:
    body, pos = bytearray(), 0
    if len(buf) > MAX_CHUNKED_WIRE:
        raise PolicyError("chunked body too large")
    while (eol := buf.find(b"\r\n", pos)) >= 0:
        size = _CHUNK.fullmatch(buf[pos:eol])
        if not size:
            raise PolicyError(f"invalid chunk size line {buf[pos:eol][:20]!r}")
        n, pos = int(size[1], 16), eol + 2
        if len(body) + n > MAX_BODY:
            raise PolicyError(f"policy larger than {MAX_BODY} bytes")
        if n == 0:  # last chunk: skip trailer fields up to the empty line
            while (eol := buf.find(b"\r\n", pos)) > pos:
                pos = eol + 2
            if eol == pos:
                return bytes(body)
            break
        if len(buf) < pos + n + 2:
            break
        if buf[pos + n:pos + n + 2] != b"\r\n":
            raise PolicyError("chunk not followed by CRLF")
        body += buf[pos:pos + n]
        pos += n + 2
    if eof:
        raise PolicyError("connection closed inside the chunked body")
    return None


class MTASTS:
    """Policies per recipient domain, for the delivery workers (one instance per process).

    ``resolver`` is the async resolver from ``dnsresolve.make_resolver``; ``cafile`` adds CAs to
    the system's ([outbound] ca_file). ``https_port`` and ``connect_host`` redirect the fetch
    (tests); the certificate is still checked for "mta-sts.<domain>". ``timeout`` bounds one
    fetch: shorter than the minute RFC 8461 §3.3 suggests, because a delivery waits on it and
    a failure falls back to the cache.
    """

    def __init__(self, resolver, cache_dir: Path, *, https_port: int = 443,
                 cafile: str | None = None, timeout: float = 10.0,
                 connect_host: str | None = None, clock: Callable[[], float] = time.time):
        self.resolver = resolver
        self.cache_dir = Path(cache_dir)
        self.https_port, self.timeout, self.connect_host = https_port, timeout, connect_host
        self.clock = clock  # wall clock: fetch times are stored on disk across restarts
        self.ssl = ssl.create_default_context()
        if cafile:
            self.ssl.load_verify_locations(cafile)
        self.ssl.set_alpn_protocols(["http/1.1"])
        self._cache: dict[str, Policy | None] = {}  # None: no file on disk either
        self._failed: dict[str, tuple[str, float]] = {}  # domain -> (id, time of failure)
        self._inflight: dict[str, asyncio.Future] = {}

    async def policy(self, domain: str) -> Policy | None:
        """The policy to apply to mail for ``domain`` (an AddressError for a bad name)."""
        domain = normalize_domain(domain)
        task = self._inflight.get(domain)
        if task is None:  # concurrent deliveries to one domain share one lookup and fetch
            task = self._inflight[domain] = asyncio.ensure_future(self._policy(domain))
            task.add_done_callback(lambda _: self._inflight.pop(domain, None))
        return await asyncio.shield(task)

    async def _policy(self, domain: str) -> Policy | None:
        now = self.clock()
        cached = self._cached(domain)
        if cached and cached.expired(now):
            cached = None  # RFC 8461 §5.1: an expired policy is no policy
        try:
            policy_id = await self._txt_id(domain)
        except PolicyError as err:
            # RFC 8461 §3.1/§5.1: a missing or unusable record does not cancel a cached
            # policy (an attacker can strip it); domains opt out with mode "none" (§8.3).
            log.debug("mta-sts %s: %s%s", domain, err, " (cached policy kept)" if cached else "")
            return cached
        if cached and cached.id == policy_id and now - cached.fetched < REFRESH_AFTER:
            return cached
        failed = self._failed.get(domain)
        if failed and failed[0] == policy_id and now - failed[1] < FETCH_BACKOFF:
            return cached
        try:
            async with asyncio.timeout(self.timeout):
                text = await self._fetch(domain)
            policy = parse_policy(text, policy_id, now)
        except (PolicyError, OSError, TimeoutError, dns.exception.DNSException) as err:
            self._failed[domain] = (policy_id, now)
            reason = str(err) or type(err).__name__
            if isinstance(err, TimeoutError):
                reason = f"timed out after {self.timeout:g}s"
            log.warning("mta-sts fetch %s id=%s failed: %s%s", domain, policy_id, reason,
                        f"; using cached id={cached.id}" if cached else "")
            return cached
        self._failed.pop(domain, None)
        log.info("mta-sts fetch %s id=%s mode=%s max_age=%d mx=%s", domain, policy.id,
                 policy.mode, policy.max_age, ",".join(policy.mx))
        self._store(domain, policy)
        return policy

    async def _txt_id(self, domain: str) -> str:
        try:
            answer = await self.resolver.resolve(f"_mta-sts.{domain}", "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            raise PolicyError("no _mta-sts TXT record") from None
        except (dns.exception.DNSException, OSError) as err:
            raise PolicyError(f"TXT lookup failed: {err}") from None
        # RFC 8461 §3.1: a record's strings are one text; only records that begin with
        # "v=STSv1;" count, and exactly one of them must be there.
        texts = [b"".join(rr.strings).decode("latin-1") for rr in answer]
        sts = [t for t in texts if t.startswith("v=STSv1;")]
        if len(sts) != 1:
            raise PolicyError(f"{len(sts)} STSv1 TXT records")
        return parse_txt(sts[0])

    async def _fetch(self, domain: str) -> str:
        """GET the policy: RFC 8461 §3.3, no redirects, status 200 and text/plain only."""
        host = f"mta-sts.{domain}"
        reader, writer = await self._connect(host)
        try:
            writer.write(f"GET {WELL_KNOWN} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mailstead\r\n"
                         "Accept: text/plain\r\nConnection: close\r\n\r\n".encode())
            buf, head = b"", None
            while True:
                data = await reader.read(16384)
                buf += data
                if head is None:
                    if (head := parse_head(buf, eof=not data)) is None:
                        continue
                    status, headers, buf = head
                    if status != 200:  # 3xx included: RFC 8461 §3.3 forbids following them
                        raise PolicyError(f"HTTP status {status}")
                    ctype = headers.get("content-type", "").partition(";")[0].strip().lower()
                    if ctype != "text/plain":  # RFC 8461 §3.3: not someone's upload or page
                        raise PolicyError(f"Content-Type {ctype or 'missing'}, not text/plain")
                if (body := parse_body(headers, buf, eof=not data)) is not None:
                    break
        finally:
            writer.transport.abort()  # nothing more to say; no waiting for a TLS close_notify
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError("policy is not UTF-8") from None

    async def _connect(self, host: str):
        if self.connect_host:
            addresses = [self.connect_host]
        else:  # through our resolver: [dns] nameservers applies here too
            addresses, reasons = [], []
            for rtype in ("AAAA", "A"):
                try:
                    addresses += [r.address for r in await self.resolver.resolve(host, rtype)]
                except dns.exception.DNSException as err:  # NXDOMAIN, NoAnswer, SERVFAIL...
                    reasons.append(f"{rtype}: {err}")
            if not addresses:
                raise PolicyError(f"no address for {host}: {'; '.join(reasons)}")
        reasons = []
        for address in addresses:
            try:
                # Verified against "mta-sts.<domain>" whatever address we dial (§3.3).
                return await asyncio.wait_for(asyncio.open_connection(
                    address, self.https_port, ssl=self.ssl, server_hostname=host),
                    CONNECT_TIMEOUT)
            except TimeoutError:
                reasons.append(f"{address}: timed out")
            except OSError as err:
                reasons.append(f"{address}: {err}")
        raise PolicyError(f"{host} port {self.https_port}: {'; '.join(reasons)}")

    # ------------------------------------------------------------------ cache
    def _path(self, domain: str) -> Path:
        return self.cache_dir / f"{domain}.json"  # normalize_domain left only [a-z0-9.-]

    def _cached(self, domain: str) -> Policy | None:
        if domain not in self._cache:
            self._cache[domain] = self._load(domain)
        return self._cache[domain]

    def _load(self, domain: str) -> Policy | None:
        try:
            data = json.loads(self._path(domain).read_bytes())
            fetched = float(data["fetched"])
            # A NaN or future fetch time would make a policy that never expires.
            if not _TXT_ID.fullmatch(data["id"]) or not 0 <= fetched <= self.clock() + 86400:
                raise ValueError(f"bad id or fetch time {data['id']!r} {fetched}")
            # Stored as policy text, so a file is checked by the same parser as a fetch.
            return parse_policy(data["policy"], data["id"], fetched)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, PolicyError) as err:
            log.warning("mta-sts cache for %s unreadable, ignored: %s", domain, err)
            return None

    def _store(self, domain: str, policy: Policy) -> None:
        self._cache[domain] = policy
        text = f"version: STSv1\nmode: {policy.mode}\nmax_age: {policy.max_age}\n"
        text += "".join(f"mx: {m}\n" for m in policy.mx)
        data = {"domain": domain, "id": policy.id, "fetched": policy.fetched, "policy": text}
        try:
            make_private_dir(self.cache_dir)
            atomic_write(self._path(domain), json.dumps(data, indent=1) + "\n")
        except OSError as err:  # the policy still applies; only a restart would forget it
            log.warning("mta-sts cache for %s not saved: %s", domain, err)
