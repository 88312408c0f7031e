"""Authoritative test DNS server on loopback (UDP + TCP on one port), built on dnslib.

Project rule: tests only touch loopback, DNS included. Every test instance of mailstead sets
``[dns] nameservers`` to ``DNSTestServer.nameserver`` and never sees the system resolver.

    with DNSTestServer(DEFAULT_ZONE) as dns:       # port 0: a free port, UDP and TCP
        dns.set("sel1._domainkey.example.test", "TXT", "v=DKIM1; k=rsa; p=MIIB...")
        config["dns"]["nameservers"] = dns.nameserver          # "127.0.0.1:PORT"
        assert ("remote.test.", "MX") in dns.queries

Answers like a real authoritative server: NODATA (NOERROR + SOA) when the name exists without
that type (dnslib's demo ZoneResolver says NXDOMAIN, which breaks AAAA-then-A lookups);
NXDOMAIN + SOA for a missing name inside a zone; REFUSED outside every zone (never forwarded:
a stray lookup fails fast instead of leaving the machine); CNAME chasing; ``*`` wildcards;
AA bit; A/AAAA glue for MX/SRV/NS targets; UDP replies over 512 bytes (or the EDNS size)
truncated with TC=1 and the question kept, so clients retry over TCP.

Names given to add/set/delete/add_zone are absolute with or without the trailing dot. TXT
rdata that does not start with ``"`` is one value, split into 255-byte strings as the wire
format requires (so a DKIM key or ``v=spf1 -all`` is passed as-is); quoted TXT rdata is zone
syntax (several strings, each split if longer than 255).
"""
from __future__ import annotations

import ipaddress
import socket
import socketserver
import sys
import threading
from collections.abc import Iterable

import dns.asyncresolver
import dns.resolver
from dnslib import EDNS0, QTYPE, RCODE, RR, TXT, DNSHeader, DNSLabel, DNSRecord, ZoneParser

# Three zones, loopback addresses only. No SPF/DKIM/DMARC/MTA-STS/TLSA records on purpose:
# tests that need a policy publish it with set(), so the default answers stay "none".
# 127.0.0.1 reverses to localhost.example.test, whose A record points back to 127.0.0.1,
# so forward-confirmed reverse DNS of a loopback client passes and the Received header
# reads "(localhost.example.test [127.0.0.1])". No AAAA anywhere (AAAA queries get NODATA).
DEFAULT_ZONE = """\
$TTL 300
$ORIGIN example.test.
@           IN SOA  ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@           IN NS   ns.example.test.
@           IN MX   10 mail.example.test.
ns          IN A    127.0.0.1
mail        IN A    127.0.0.1
localhost   IN A    127.0.0.1

$ORIGIN remote.test.
@           IN SOA  ns.remote.test. hostmaster.remote.test. 1 3600 600 86400 60
@           IN NS   ns.remote.test.
@           IN MX   10 mx.remote.test.
ns          IN A    127.0.0.1
mx          IN A    127.0.0.1

$ORIGIN 0.0.127.in-addr.arpa.
@           IN SOA  ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@           IN NS   ns.example.test.
1           IN PTR  localhost.example.test.
"""

_MAX_CHAIN = 16  # CNAME hops before giving up (also stops loops)


def _key(name) -> str:
    s = str(name).lower()
    return s if s.endswith(".") else s + "."


def _split255(value: bytes) -> list[bytes]:
    return [value[i:i + 255] for i in range(0, len(value), 255)] or [b""]


class _ZoneParser(ZoneParser):
    """dnslib's parser rejects TXT strings over 255 bytes; split them instead (DKIM keys)."""

    def parse_rr(self, rr):
        i = 1 + rr[1].isdigit()  # same token layout as ZoneParser.parse_rr: name [ttl] [class]
        i += rr[i] in ("IN", "CH", "HS")
        if rr[i] != "TXT":
            return super().parse_rr(rr)
        out = super().parse_rr(rr[:i + 1])
        out.rdata = TXT([c for s in rr[i + 1:] for c in _split255(s.encode())])
        return out


def _parse(text: str) -> list[RR]:
    return list(_ZoneParser(text, origin="", ttl=300))


class _UDPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        out = self.server.owner._answer(data, udp=True)
        if out:
            sock.sendto(out, self.client_address)


class _TCPHandler(socketserver.StreamRequestHandler):
    """RFC 7766 framing (2-byte length); several queries may share one connection."""

    timeout = 10

    def handle(self):
        owner = self.server.owner
        with owner._lock:
            owner._conns.add(self.connection)
        try:
            while len(head := self.rfile.read(2)) == 2:
                out = owner._answer(self.rfile.read(int.from_bytes(head, "big")), udp=False)
                if out:
                    self.wfile.write(len(out).to_bytes(2, "big") + out)
        except OSError:
            pass
        finally:
            with owner._lock:
                owner._conns.discard(self.connection)


class _ServerMixin:
    def __init__(self, owner: DNSTestServer, addr, handler):
        self.owner = owner
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        super().__init__(addr, handler)

    def handle_error(self, request, client_address):
        # socketserver prints tracebacks to stderr; keep them for the test to inspect instead.
        self.owner.errors.append(sys.exc_info()[1])


class _UDPServer(_ServerMixin, socketserver.UDPServer):
    pass  # no SO_REUSEADDR on UDP: on Linux it would let two servers share the port


class _TCPServer(_ServerMixin, socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True  # rebinding the same port right after stop() (TIME_WAIT)
    daemon_threads = True


class DNSTestServer:
    __test__ = False  # not a pytest test class

    def __init__(self, zone_text: str = "", host: str = "127.0.0.1", port: int = 0):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"test DNS server must listen on loopback, not {host}")
        self.host, self.port = host, port
        self.queries: list[tuple[str, str]] = []  # ("remote.test.", "MX"): lowercase, dotted
        self.errors: list[BaseException] = []     # exceptions raised while answering
        self._lock = threading.RLock()            # guards records, queries and _conns
        self._rrs: dict[str, list[RR]] = {}
        self._soas: dict[str, RR] = {}            # zone apex -> SOA; a zone is an SOA
        self._conns: set[socket.socket] = set()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        if zone_text:
            self.load(zone_text)

    # ------------------------------------------------------------------ records
    def load(self, zone_text: str) -> None:
        """Add records in zone-file syntax ($ORIGIN, $TTL; default TTL 300)."""
        self._insert(_parse(zone_text))

    def add_zone(self, origin: str) -> None:
        """An empty zone (SOA only): names under it get NXDOMAIN/NODATA instead of REFUSED."""
        o = _key(origin)
        with self._lock:
            if o not in self._soas:
                self.load(f"{o} 300 IN SOA ns.{o} hostmaster.{o} 1 3600 600 86400 60")

    def add(self, name: str, rtype: str, rdata: str | Iterable[str], ttl: int = 300) -> None:
        """Add records; a list of rdata adds several. The name must be inside a zone."""
        rtype = rtype.upper()
        rrs = []
        for d in [rdata] if isinstance(rdata, str) else rdata:
            if rtype == "TXT" and not d.lstrip().startswith('"'):
                rrs.append(RR(DNSLabel(_key(name)), QTYPE.TXT, ttl=ttl,
                              rdata=TXT(_split255(d.encode()))))
            else:
                rrs += _parse(f"{_key(name)} {ttl} IN {rtype} {d}")
        self._insert(rrs)

    def set(self, name: str, rtype: str, rdata: str | Iterable[str], ttl: int = 300) -> None:
        """Replace all records of that type at name (atomically for concurrent queries)."""
        with self._lock:
            self.delete(name, rtype)
            self.add(name, rtype, rdata, ttl)

    def delete(self, name: str, rtype: str | None = None) -> None:
        """Remove all records at name, or only those of rtype. Missing records are fine."""
        k = _key(name)
        t = None if rtype is None else getattr(QTYPE, rtype.upper())
        with self._lock:
            keep = [r for r in self._rrs.get(k, []) if t is not None and r.rtype != t]
            if keep:
                self._rrs[k] = keep
            else:
                self._rrs.pop(k, None)
            if t in (None, QTYPE.SOA):
                self._soas.pop(k, None)

    def _insert(self, rrs: list[RR]) -> None:
        with self._lock:
            new_soas = {_key(r.rname): r for r in rrs if r.rtype == QTYPE.SOA}
            # Fail loudly on a typo'd name rather than serve a record nobody can query.
            outside = [str(r.rname) for r in rrs
                       if self._zone_of(_key(r.rname), new_soas) is None]
            if outside:
                raise ValueError(f"not inside any zone (add_zone first): {outside}")
            self._soas.update(new_soas)
            for r in rrs:
                self._rrs.setdefault(_key(r.rname), []).append(r)

    # ------------------------------------------------------------------ lookup
    def _zone_of(self, k: str, extra: dict | None = None) -> str | None:
        """The closest enclosing zone apex of name k, or None."""
        labels = k.split(".")
        for i in range(len(labels)):
            apex = ".".join(labels[i:]) or "."
            if apex in self._soas or (extra and apex in extra):
                return apex
        return None

    def _exists(self, k: str) -> bool:
        """k has records or is an empty non-terminal (e.g. _tcp.example.test. under SRVs)."""
        return k in self._rrs or any(x.endswith("." + k) for x in self._rrs)

    def _lookup(self, k: str, zone: str) -> list[RR] | None:
        """Records at k ([] = exists, no records), or wildcard-synthesised; None = NXDOMAIN."""
        if self._exists(k):
            return self._rrs.get(k, [])
        # RFC 4592: only the closest encloser's "*" child may match, never one further up.
        labels = k.split(".")
        for i in range(1, len(labels)):
            encloser = ".".join(labels[i:])
            if self._exists(encloser) or encloser == zone:
                wild = self._rrs.get("*." + encloser)
                if wild is None:
                    return None
                return [RR(DNSLabel(k), r.rtype, r.rclass, r.ttl, r.rdata) for r in wild]
        return None

    def _resolve(self, request: DNSRecord, reply: DNSRecord) -> None:
        qname, qtype = _key(request.q.qname), request.q.qtype
        zone = self._zone_of(qname)
        if zone is None:
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return
        name, match = qname, []
        for _ in range(_MAX_CHAIN):
            rrs = self._lookup(name, zone)
            if rrs is None:
                reply.header.rcode = RCODE.NXDOMAIN  # of the last name in a chain (RFC 6604)
                break
            match = [r for r in rrs if qtype in (r.rtype, QTYPE.ANY)]
            cname = [r for r in rrs if r.rtype == QTYPE.CNAME]
            if match or not cname:
                reply.add_answer(*match)
                break
            reply.add_answer(cname[0])
            name = _key(cname[0].rdata.label)
            zone = self._zone_of(name)
            if zone is None:
                return  # target outside our data: leave it to the client, as BIND does
        if not match:  # NXDOMAIN or NODATA: the zone's SOA, TTL capped at its minimum
            soa = self._soas[zone]
            ttl = min(soa.ttl, soa.rdata.times[-1])
            reply.add_auth(RR(soa.rname, QTYPE.SOA, soa.rclass, ttl, soa.rdata))
            return
        for r in match:
            if r.rtype in (QTYPE.MX, QTYPE.NS, QTYPE.SRV):
                target = _key(r.rdata.target if r.rtype == QTYPE.SRV else r.rdata.label)
                for g in self._rrs.get(target, []):
                    if g.rtype in (QTYPE.A, QTYPE.AAAA) and g not in reply.ar:
                        reply.add_ar(g)

    def _answer(self, data: bytes, udp: bool) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except Exception:  # garbage: FORMERR, if there is at least an id to answer to
            head = DNSHeader(id=int.from_bytes(data[:2], "big"), qr=1, rcode=RCODE.FORMERR)
            return DNSRecord(head).pack() if len(data) >= 2 else None
        if request.header.qr:
            return None  # a response, not a query: never answer those
        head = DNSHeader(id=request.header.id, qr=1, aa=1, ra=0, rd=request.header.rd,
                         opcode=request.header.opcode)
        opt = [r for r in request.ar if r.rtype == QTYPE.OPT]

        def skeleton() -> DNSRecord:  # question always echoed; EDNS answered with EDNS
            r = DNSRecord(head, questions=list(request.questions))
            if opt:
                r.add_ar(EDNS0(udp_len=1232))
            return r

        reply = skeleton()
        with self._lock:
            if request.questions:
                self.queries.append((_key(request.q.qname), QTYPE[request.q.qtype]))
            if request.header.opcode != 0:
                head.rcode = RCODE.NOTIMP
            elif len(request.questions) != 1:
                head.rcode = RCODE.FORMERR
            else:
                try:
                    self._resolve(request, reply)
                except Exception as exc:
                    self.errors.append(exc)
                    head.rcode, head.aa = RCODE.SERVFAIL, 0
                    reply = skeleton()
        out = reply.pack()
        if udp and len(out) > (max(512, opt[0].rclass) if opt else 512):
            # TC=1 with header + question (+ OPT) only: dnslib's truncate() drops the
            # question too, and dnspython rejects such a reply instead of retrying over TCP.
            head.tc = 1
            out = skeleton().pack()
        return out

    def queried(self, name: str, rtype: str | None = None) -> bool:
        """Whether name (any case, dot optional) was looked up, optionally with rtype."""
        k = _key(name)
        with self._lock:
            return any(q == k and (rtype is None or t == rtype.upper()) for q, t in self.queries)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DNSTestServer:
        if self._servers:
            raise RuntimeError("already started")
        # Bind TCP first (port 0 picks a free one), then UDP on the same number; retry if
        # that UDP port is taken. Both sockets stay bound, so there is no close/reopen race.
        for attempt in range(50):
            tcp = _TCPServer(self, (self.host, self.port), _TCPHandler)
            try:
                udp = _UDPServer(self, (self.host, tcp.server_address[1]), _UDPHandler)
                break
            except OSError:
                tcp.server_close()
                if self.port or attempt == 49:
                    raise
        self.port = tcp.server_address[1]
        self._servers = [udp, tcp]
        # Short poll interval: shutdown() waits for it, and every test fixture stops a server.
        self._threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.02},
                                          name=f"dnstest-{self.port}", daemon=True)
                         for s in self._servers]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop serving and close both sockets; the port is free afterwards. Idempotent."""
        for s in self._servers:
            s.shutdown()
            s.server_close()
        with self._lock:
            for c in list(self._conns):  # unblock TCP handlers waiting on idle connections
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self._threads:
            t.join(5)
        self._servers, self._threads = [], []

    def __enter__(self) -> DNSTestServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients
    @property
    def nameserver(self) -> str:
        """"127.0.0.1:PORT" ("[::1]:PORT" for IPv6): the form [dns] nameservers takes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _configure(self, r, timeout: float):
        r.port = self.port  # before nameservers: plain-string nameservers take this port
        r.nameservers = [self.host]
        r.timeout = r.lifetime = timeout
        return r

    def resolver(self, timeout: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver (configure=False: /etc/resolv.conf is never read) for us."""
        return self._configure(dns.resolver.Resolver(configure=False), timeout)

    def async_resolver(self, timeout: float = 2.0) -> dns.asyncresolver.Resolver:
        return self._configure(dns.asyncresolver.Resolver(configure=False), timeout)
