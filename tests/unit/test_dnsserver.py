"""The loopback test DNS server, checked with dnspython over real loopback sockets."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.reversename
import pytest

from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer


@pytest.fixture
def srv():
    with DNSTestServer(DEFAULT_ZONE) as s:
        yield s
    assert not s.errors


def raw(srv: DNSTestServer, name: str, rtype: str, tcp: bool = False, **kw) -> dns.message.Message:
    """One query, no resolver logic: to look at rcode, flags and sections directly."""
    q = dns.message.make_query(name, rtype, **kw)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, srv.host, port=srv.port, timeout=2)


def addresses(answer) -> list[str]:
    return sorted(r.address for r in answer)


def test_nameserver_and_port(srv):
    assert srv.port > 0
    assert srv.nameserver == f"127.0.0.1:{srv.port}"
    r = srv.resolver()
    assert r.nameservers == ["127.0.0.1"] and r.port == srv.port


def test_loopback_only():
    with pytest.raises(ValueError):
        DNSTestServer(host="0.0.0.0")


def test_mx_with_glue_and_aa(srv):
    ans = srv.resolver().resolve("remote.test", "MX")
    assert [(r.preference, str(r.exchange)) for r in ans] == [(10, "mx.remote.test.")]
    resp = ans.response
    assert resp.flags & dns.flags.AA
    glue = [(str(rr.name), rr.rdtype, [r.address for r in rr]) for rr in resp.additional]
    assert glue == [("mx.remote.test.", dns.rdatatype.A, ["127.0.0.1"])]


def test_a(srv):
    assert addresses(srv.resolver().resolve("mail.example.test", "A")) == ["127.0.0.1"]


def test_aaaa_is_nodata_not_nxdomain(srv):
    with pytest.raises(dns.resolver.NoAnswer):
        srv.resolver().resolve("mx.remote.test", "AAAA")
    resp = raw(srv, "mx.remote.test", "AAAA")
    assert resp.rcode() == dns.rcode.NOERROR and not resp.answer
    assert [str(rr.name) for rr in resp.authority] == ["remote.test."]
    assert resp.authority[0].rdtype == dns.rdatatype.SOA


def test_nxdomain_in_zone_has_soa(srv):
    with pytest.raises(dns.resolver.NXDOMAIN):
        srv.resolver().resolve("nope.example.test", "A")
    resp = raw(srv, "nope.example.test", "A")
    assert resp.rcode() == dns.rcode.NXDOMAIN and resp.flags & dns.flags.AA
    assert resp.authority[0].rdtype == dns.rdatatype.SOA
    assert resp.authority[0].ttl == 60  # capped at the SOA minimum (RFC 2308)


def test_refused_out_of_zone_fails_fast(srv):
    t0 = time.monotonic()
    with pytest.raises(dns.resolver.NoNameservers):
        srv.resolver().resolve("example.com", "A")
    assert time.monotonic() - t0 < 1
    resp = raw(srv, "example.com", "MX")
    assert resp.rcode() == dns.rcode.REFUSED and not resp.flags & dns.flags.AA


def test_cname_chase(srv):
    srv.add("www.example.test", "CNAME", "mail.example.test")
    srv.add("alias.example.test", "CNAME", "www.example.test")
    srv.add("out.example.test", "CNAME", "mx.remote.test")  # into another of our zones
    srv.add("dangling.example.test", "CNAME", "gone.example.test")
    ans = srv.resolver().resolve("alias.example.test", "A")
    assert addresses(ans) == ["127.0.0.1"]
    assert str(ans.canonical_name) == "mail.example.test."
    assert str(srv.resolver().resolve("out.example.test", "A").canonical_name) == "mx.remote.test."
    cname = srv.resolver().resolve("www.example.test", "CNAME")
    assert str(cname[0].target) == "mail.example.test."
    with pytest.raises(dns.resolver.NXDOMAIN):  # RFC 6604: rcode of the last name
        srv.resolver().resolve("dangling.example.test", "A")


def test_cname_loop_terminates(srv):
    srv.add("a.example.test", "CNAME", "b.example.test")
    srv.add("b.example.test", "CNAME", "a.example.test")
    resp = raw(srv, "a.example.test", "A")
    assert resp.rcode() == dns.rcode.NOERROR


def test_wildcard(srv):
    srv.add("*.example.test", "A", "127.0.0.9")
    r = srv.resolver()
    ans = r.resolve("anything.example.test", "A")
    assert addresses(ans) == ["127.0.0.9"]
    assert str(ans.rrset.name) == "anything.example.test."  # synthesised owner name
    assert addresses(r.resolve("a.b.example.test", "A")) == ["127.0.0.9"]
    # Existing names are never wildcard-matched (RFC 4592): NODATA, not 127.0.0.9.
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("mail.example.test", "TXT")
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("anything.example.test", "MX")


def test_ptr_and_forward_confirmation(srv):
    rev = dns.reversename.from_address("127.0.0.1")
    assert str(rev) == "1.0.0.127.in-addr.arpa."
    ptr = srv.resolver().resolve(rev, "PTR")
    assert [str(r.target) for r in ptr] == ["localhost.example.test."]
    assert addresses(srv.resolver().resolve(ptr[0].target, "A")) == ["127.0.0.1"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        srv.resolver().resolve(dns.reversename.from_address("127.0.0.5"), "PTR")


def test_srv_glue_and_empty_non_terminal(srv):
    srv.add("_submission._tcp.example.test", "SRV", "0 1 587 mail.example.test.")
    resp = srv.resolver().resolve("_submission._tcp.example.test", "SRV").response
    assert [str(rr.name) for rr in resp.additional] == ["mail.example.test."]
    with pytest.raises(dns.resolver.NoAnswer):  # _tcp exists (it has children): NODATA
        srv.resolver().resolve("_tcp.example.test", "TXT")


def test_big_txt_truncated_over_udp_then_whole_over_tcp(srv):
    value = ("v=DKIM1; k=rsa; p=" + "A" * 2000)[:1600]
    chunks = [value[i:i + 255] for i in range(0, len(value), 255)]
    srv.set("sel1._domainkey.example.test", "TXT", " ".join(f'"{c}"' for c in chunks))

    udp = raw(srv, "sel1._domainkey.example.test", "TXT")
    assert udp.flags & dns.flags.TC and not udp.answer
    assert str(udp.question[0].name) == "sel1._domainkey.example.test."  # question kept
    tcp = raw(srv, "sel1._domainkey.example.test", "TXT", tcp=True)
    assert not tcp.flags & dns.flags.TC and tcp.answer
    # EDNS: a 4096-byte buffer takes the whole answer over UDP.
    big = raw(srv, "sel1._domainkey.example.test", "TXT", use_edns=0, payload=4096)
    assert not big.flags & dns.flags.TC and big.answer and big.edns == 0
    small = raw(srv, "sel1._domainkey.example.test", "TXT", use_edns=0, payload=1232)
    assert small.flags & dns.flags.TC

    ans = srv.resolver().resolve("sel1._domainkey.example.test", "TXT")  # retries over TCP
    assert [b"".join(r.strings).decode() for r in ans] == [value]
    assert [len(s) for s in ans[0].strings] == [len(c) for c in chunks]


def test_unquoted_txt_is_one_value_split_at_255(srv):
    srv.set("example.test", "TXT", "v=spf1 mx -all")
    srv.set("k._domainkey.example.test", "TXT", "p=" + "B" * 600)
    r = srv.resolver()
    assert [r.strings for r in r.resolve("example.test", "TXT")] == [(b"v=spf1 mx -all",)]
    strings = r.resolve("k._domainkey.example.test", "TXT")[0].strings
    assert [len(s) for s in strings] == [255, 255, 92]
    assert b"".join(strings) == b"p=" + b"B" * 600


def test_set_add_delete_at_run_time(srv):
    r = srv.resolver()
    srv.set("mail.example.test", "A", "127.0.0.5")
    assert addresses(r.resolve("mail.example.test", "A")) == ["127.0.0.5"]
    srv.add("mail.example.test", "A", "127.0.0.6")
    srv.add("mail.example.test", "AAAA", "::1")
    assert addresses(r.resolve("mail.example.test", "A")) == ["127.0.0.5", "127.0.0.6"]
    srv.delete("mail.example.test", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("mail.example.test", "A")
    assert addresses(r.resolve("mail.example.test", "AAAA")) == ["::1"]
    srv.delete("mail.example.test")
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("mail.example.test", "AAAA")
    srv.set("remote.test", "MX", ["10 mx.remote.test", "20 mx.example.test."])
    assert sorted(m.preference for m in r.resolve("remote.test", "MX")) == [10, 20]


def test_names_outside_zones_are_rejected_until_add_zone(srv):
    with pytest.raises(ValueError):
        srv.add("host.other.test", "A", "127.0.0.1")
    srv.add_zone("other.test")
    r = srv.resolver()
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("host.other.test", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("other.test", "MX")
    srv.add("host.other.test", "A", "127.0.0.1")
    assert addresses(r.resolve("host.other.test", "A")) == ["127.0.0.1"]


def test_load_zone_text_with_origin_and_ttl():
    with DNSTestServer() as s:
        with pytest.raises(dns.resolver.NoNameservers):  # no zones at all: REFUSED
            s.resolver().resolve("example.test", "MX")
        s.load("$ORIGIN z.test.\n$TTL 42\n@ IN SOA ns hm 1 3600 600 86400 60\n"
               "www IN A 127.0.0.7\nmx 99 IN A 127.0.0.8\n")
        ans = s.resolver().resolve("www.z.test", "A")
        assert addresses(ans) == ["127.0.0.7"] and ans.rrset.ttl == 42
        assert s.resolver().resolve("mx.z.test", "A").rrset.ttl == 99


def test_queries_are_recorded(srv):
    srv.resolver().resolve("remote.test", "MX")
    with pytest.raises(dns.resolver.NoNameservers):
        srv.resolver().resolve("Elsewhere.Example", "A")
    assert ("remote.test.", "MX") in srv.queries
    assert ("elsewhere.example.", "A") in srv.queries
    assert srv.queried("Remote.Test", "mx") and srv.queried("remote.test.")
    assert not srv.queried("remote.test", "AAAA")


def test_async_resolver(srv):
    async def lookup():
        r = srv.async_resolver()
        mx = await r.resolve("remote.test", "MX")
        return await r.resolve(mx[0].exchange, "A")

    assert addresses(asyncio.run(lookup())) == ["127.0.0.1"]


def test_stop_frees_port_and_restart_on_same_port():
    s = DNSTestServer(DEFAULT_ZONE).start()
    port = s.port
    raw(s, "remote.test", "MX", tcp=True)
    s.stop()
    s.stop()  # idempotent
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", port))  # no SO_REUSEADDR: the UDP socket really is closed
    u.close()
    with DNSTestServer(DEFAULT_ZONE, port=port) as again:
        assert again.port == port
        assert addresses(again.resolver().resolve("mx.remote.test", "A")) == ["127.0.0.1"]
        assert addresses(raw(again, "mx.remote.test", "A", tcp=True).answer[0]) == ["127.0.0.1"]


def test_changes_while_serving_are_consistent(srv):
    seen: list[str] = []

    def hammer():
        r = srv.resolver()
        for _ in range(30):
            seen.extend(addresses(r.resolve("mail.example.test", "A")))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    i = 0
    while any(t.is_alive() for t in threads):
        srv.set("mail.example.test", "A", f"127.0.0.{i % 2 + 1}")  # delete + add, atomically
        i += 1
    for t in threads:
        t.join()
    assert len(seen) == 120 and set(seen) <= {"127.0.0.1", "127.0.0.2"}  # never empty


def test_quiet_and_formerr_on_garbage(srv, capfd):
    srv.resolver().resolve("remote.test", "MX")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(2)
        u.sendto(b"\x12\x34garbage", (srv.host, srv.port))
        reply = dns.message.from_wire(u.recv(512))
    assert reply.id == 0x1234 and reply.rcode() == dns.rcode.FORMERR
    out, err = capfd.readouterr()
    assert out == "" and err == ""
