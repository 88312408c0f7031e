"""ARC (server/inbound/arc.py, RFC 8617): chains sealed by dkimpy in the test verify against the
loopback DNS server; what we seal when forwarding verifies with dkimpy's own verifier."""

from __future__ import annotations

import datetime

import dkim
import pytest

from server import dkimkeys
from server.config import DNSSection
from server.dnsresolve import make_resolver
from server.inbound import arc
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.mailauth import MESSAGE, publish_key, rsa_key, run, sign

OURS = "mail.example.test"


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dkim")
    dkimkeys.generate(path, "example.test", datetime.date(2025, 1, 15))
    return path


@pytest.fixture(scope="module")
def dns(keydir):
    with DNSTestServer(DEFAULT_ZONE) as server:
        for zone in ("sender.test", "list.test", "relay.test"):
            server.add_zone(zone)
            publish_key(server, zone, "sel")
        for key in dkimkeys.keys_for(keydir, "example.test"):
            server.set(key.record_name, "TXT", key.txt_value())
        yield server


def forwarder_seal(message: bytes, domain: str, cv: str = "none") -> bytes:
    """``message`` sealed by ``domain`` as another ARC-aware forwarder would."""
    ar = f"Authentication-Results: {domain}; dkim=pass header.d=sender.test; arc={cv}\r\n"
    msg = ar.encode() + message
    sealed = dkim.arc_sign(msg, b"sel", domain.encode(), rsa_key()[0], domain.encode())
    assert sealed, "dkimpy made no seal"
    return b"".join(sealed) + message


def check(dns_server, message):
    resolver = make_resolver(DNSSection(nameservers=(dns_server.nameserver,), timeout=2.0))
    return run(arc.check, message, resolver)


def dnsfunc_for(dns_server):
    resolver = dns_server.resolver()

    def dnsfunc(name, timeout=5):
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except Exception:
            return None
        return b"".join(answer[0].strings)

    return dnsfunc


def test_no_chain_is_none(dns):
    assert check(dns, sign(MESSAGE, "sender.test")) == arc.ARCResult("none")


def test_one_set_passes(dns):
    result = check(dns, forwarder_seal(sign(MESSAGE, "sender.test"), "list.test"))
    assert (result.result, result.instances, result.sealer) == ("pass", 1, "list.test")


def test_two_sets_pass(dns):
    once = forwarder_seal(MESSAGE, "list.test")
    twice = forwarder_seal(once, "relay.test", cv="pass")
    result = check(dns, twice)
    assert (result.result, result.instances, result.sealer) == ("pass", 2, "relay.test")


def test_tampered_after_sealing_fails(dns):
    sealed = forwarder_seal(MESSAGE, "list.test").replace(b"numbers are", b"numbers were")
    result = check(dns, sealed)
    assert result.result == "fail"
    assert result.reason == "Most recent ARC-Message-Signature did not validate"


def test_chain_with_a_wrong_cv_fails(dns):
    """RFC 8617 §5.2: the first set must say cv=none."""
    ar = b"Authentication-Results: list.test; arc=pass\r\n"
    fake = b"ARC-Seal: i=1; cv=pass; a=rsa-sha256; d=list.test; s=sel; b=AAAA\r\n"
    assert check(dns, fake + ar + MESSAGE).result == "fail"


def test_unreachable_key_is_temperror(dns):
    ar = b"Authentication-Results: elsewhere.invalid; arc=none\r\n"
    sealed = dkim.arc_sign(ar + MESSAGE, b"sel", b"elsewhere.invalid", rsa_key()[0],
                           b"elsewhere.invalid")
    result = check(dns, b"".join(sealed) + MESSAGE)
    assert result.result == "temperror" and "REFUSED" in result.reason


def test_too_many_sets_fail_without_lookups(dns):
    sets = b"".join(f"ARC-Seal: i={i}; cv=pass; a=rsa-sha256; d=x{i}.test; s=s; b=A\r\n"
                    .encode() for i in range(1, 3 * arc.MAX_INSTANCES + 2))
    result = check(dns, sets + MESSAGE)
    assert result.result == "fail" and not dns.queried("s._domainkey.x1.test")


# --- sealing what we forward ---


def ours(arc_result: str = "none") -> bytes:
    return (f"Authentication-Results: {OURS};\r\n\tspf=pass smtp.mailfrom=sender.test;\r\n"
            f"\tdkim=pass header.d=sender.test;\r\n\tarc={arc_result}\r\n").encode()


def test_our_seal_verifies(dns, keydir):
    key = arc.sealing_key(keydir, "example.test")
    message = b"Received: from x by mail.example.test; Wed, 15 Jan 2025 10:00:00 +0000\r\n" \
        + ours() + sign(MESSAGE, "sender.test")
    seal = arc.seal(message, authserv_id=OURS, key=key)
    names = [line.split(b":")[0] for line in seal.split(b"\r\n") if line[:1].isalpha()]
    assert names == [b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"]
    assert b"cv=none" in seal and b"d=example.test" in seal
    assert b"ARC-Authentication-Results: i=1; mail.example.test;" in seal
    cv, sets, reason = dkim.arc_verify(seal + message, dnsfunc=dnsfunc_for(dns))
    assert (cv, reason) == (dkim.CV_Pass, "success")
    # And our own verifier agrees.
    result = check(dns, seal + message)
    assert (result.result, result.sealer) == ("pass", "example.test")


def test_our_seal_extends_a_passing_chain(dns, keydir):
    key = arc.sealing_key(keydir, "example.test")
    incoming = forwarder_seal(MESSAGE, "list.test")
    message = ours("pass") + incoming
    seal = arc.seal(message, authserv_id=OURS, key=key)
    assert b"i=2; cv=pass" in seal
    cv, sets, _ = dkim.arc_verify(seal + message, dnsfunc=dnsfunc_for(dns))
    assert cv == dkim.CV_Pass and len(sets) == 2


def test_seal_needs_our_authentication_results(keydir):
    key = arc.sealing_key(keydir, "example.test")
    with pytest.raises(arc.SealError):
        arc.seal(MESSAGE, authserv_id=OURS, key=key)


def test_sealing_key_is_the_newest_rsa_key(tmp_path):
    assert arc.sealing_key(tmp_path, "example.test") is None
    dkimkeys.generate(tmp_path, "example.test", datetime.date(2025, 1, 1), ed25519=True)
    newer = dkimkeys.new_key(tmp_path, "example.test", datetime.date(2025, 6, 1), "rsa")
    assert arc.sealing_key(tmp_path, "example.test") == newer
