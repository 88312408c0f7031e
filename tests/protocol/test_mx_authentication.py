"""Inbound trust end to end: a real instance's MX checks SPF, DKIM, DMARC and ARC against
records on its own loopback DNS server, writes one Authentication-Results field, refuses or
files DMARC failures as the sender's policy says, defers when DNS does not answer, removes
forged results and ARC-seals what it forwards."""

from __future__ import annotations

import email
import shutil
import smtplib

import dkim
import pytest

from server import dkimkeys
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.instance import Instance
from tests.support.mailauth import message, publish_key, sign

HOST = "mail.example.test"
ZONES = {
    # domain: (SPF, DMARC); mail comes from 127.0.0.1
    "sender.test": ("v=spf1 ip4:127.0.0.1 -all", "v=DMARC1; p=reject"),
    "bank.test": ("v=spf1 ip4:192.0.2.1 -all", "v=DMARC1; p=reject"),
    "shop.test": ("v=spf1 ip4:192.0.2.1 -all", "v=DMARC1; p=quarantine"),
}


@pytest.fixture(scope="module")
def dns():
    with DNSTestServer(DEFAULT_ZONE) as server:
        for domain, (spf, policy) in ZONES.items():
            server.add_zone(domain)
            server.set(domain, "TXT", spf)
            server.set(f"_dmarc.{domain}", "TXT", policy)
            publish_key(server, domain, "sel")
        yield server
    assert not server.errors, server.errors


def start(tmp_path_factory, dns, extra: str = "") -> Instance:
    inst = Instance(tmp_path_factory.mktemp("mx-auth"), dns.nameserver, extra_config=extra)
    inst.add_user("ann@example.test")
    inst.add_alias("fwd@example.test", "ann@example.test", "kim@elsewhere.invalid")
    return inst.start()


def publish_our_key(inst: Instance, dns) -> None:
    """So the forwarded copy's ARC seal can be checked as a receiver would. (Each instance
    made this month has the same selector, so this is set by the test that needs it.)"""
    for key in dkimkeys.keys_for(inst.data_dir / "dkim", "example.test"):
        dns.set(key.record_name, "TXT", key.txt_value())


@pytest.fixture(scope="module")
def mx(tmp_path_factory, dns):
    inst = start(tmp_path_factory, dns)
    yield inst
    inst.stop()


@pytest.fixture(scope="module")
def junk_mx(tmp_path_factory, dns):
    inst = start(tmp_path_factory, dns, '[inbound]\ndmarc_reject = "junk"\n')
    yield inst
    inst.stop()


def stored(inst: Instance, marker: bytes, folder: str = "") -> bytes:
    """The one message in ann's ``folder`` whose body has ``marker`` (each test's own)."""
    box = inst.maildir("ann@example.test", folder)
    [found] = [m for m in (box.get_bytes(k) for k in box.iterkeys()) if marker in m]
    return found


def counts(inst: Instance) -> tuple[int, int]:
    return (len(inst.maildir("ann@example.test").keys()),
            len(inst.maildir("ann@example.test", "Junk").keys()))


def auth_results(stored: bytes) -> list[str]:
    return [" ".join(v.split()) for v in
            email.message_from_bytes(stored).get_all("Authentication-Results", [])]


def test_signed_message_passes(mx):
    before = counts(mx)
    msg = sign(message("alice@sender.test", b"signed and sealed\r\n"), "sender.test")
    assert mx.send("ann@example.test", msg, sender="bounces@sender.test") == {}
    assert counts(mx) == (before[0] + 1, before[1])
    copy = stored(mx, b"signed and sealed")
    [ar] = auth_results(copy)
    assert ar.startswith(f"{HOST}; spf=pass smtp.mailfrom=sender.test; ")
    assert "dkim=pass header.d=sender.test header.s=sel header.a=rsa-sha256" in ar
    assert "dmarc=pass (p=reject sp=reject pct=100 dis=none) header.from=sender.test" in ar
    assert ar.endswith("arc=none")
    # Our trace first, then our result, then the message byte for byte.
    assert copy.index(b"Received: ") < copy.index(b"Authentication-Results: ")
    assert copy.endswith(msg)


def test_unsigned_mail_without_policies_is_accepted(mx):
    """What the other protocol tests send: no records at all is dmarc=none, delivered."""
    assert mx.send("ann@example.test", message("bob@remote.test", b"plain\r\n")) == {}
    [ar] = auth_results(stored(mx, b"plain"))
    assert ar == (f"{HOST}; spf=none smtp.mailfrom=remote.test; dkim=none; "
                  "dmarc=none header.from=remote.test; arc=none")


def test_forgery_of_a_reject_domain_is_refused(mx):
    before = counts(mx)
    msg = message("ceo@bank.test", b"please wire the money\r\n")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        mx.send("ann@example.test", msg, sender="ceo@bank.test")
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.decode() == (
        "5.7.1 DMARC policy of bank.test is reject: SPF fail for bank.test; "
        "no DKIM signature")
    assert counts(mx) == before
    assert "action=reject" in mx.wait_for_log("action=reject")


def test_forgery_is_filed_into_junk_when_configured(junk_mx):
    before = counts(junk_mx)
    msg = message("ceo@bank.test", b"please wire the money\r\n")
    assert junk_mx.send("ann@example.test", msg, sender="ceo@bank.test") == {}
    assert counts(junk_mx) == (before[0], before[1] + 1)
    [ar] = auth_results(stored(junk_mx, b"wire the money", "Junk"))
    assert "spf=fail" in ar and "dis=reject" in ar and "header.from=bank.test" in ar


def test_quarantine_failure_goes_to_junk(mx):
    before = counts(mx)
    msg = message("offers@shop.test", b"50% off\r\n")
    assert mx.send("ann@example.test", msg, sender="offers@shop.test") == {}
    assert counts(mx) == (before[0], before[1] + 1)
    [ar] = auth_results(stored(mx, b"50% off", "Junk"))
    assert "dmarc=fail (p=quarantine sp=quarantine pct=100 dis=quarantine)" in ar


def test_junk_folder_is_made_again_if_deleted(mx):
    """A user may delete Junk over IMAP; filing into it must not then fail forever."""
    shutil.rmtree(mx.data_dir / "mail" / "example.test" / "ann" / ".Junk")
    msg = message("offers@shop.test", b"junk again\r\n")
    assert mx.send("ann@example.test", msg, sender="offers@shop.test") == {}
    assert stored(mx, b"junk again", "Junk")


def test_dns_failure_is_451(mx):
    """The From domain's DMARC policy cannot be looked up (the server REFUSES the name)."""
    before = counts(mx)
    with pytest.raises(smtplib.SMTPDataError) as deferred:
        mx.send("ann@example.test", message("a@elsewhere.invalid"), sender="a@elsewhere.invalid")
    assert (deferred.value.smtp_code, deferred.value.smtp_error[:5]) == (451, b"4.4.3")
    assert counts(mx) == before


def test_forged_results_of_ours_are_removed(mx):
    """RFC 8601 §5: ours (in any case) is removed, another ADMD's is kept."""
    forged = (b"Authentication-Results: MAIL.example.test; dkim=pass header.d=bank.test;\r\n"
              b"\tdmarc=pass header.from=bank.test\r\n")
    theirs = b"Authentication-Results: mx.remote.test; spf=pass smtp.mailfrom=remote.test\r\n"
    rest = message("bob@remote.test", b"trust me\r\n")
    assert mx.send("ann@example.test", forged + theirs + rest) == {}
    copy = stored(mx, b"trust me")
    ours, other = auth_results(copy)
    assert ours.startswith(f"{HOST}; spf=none") and "bank.test" not in ours
    assert other == "mx.remote.test; spf=pass smtp.mailfrom=remote.test"
    assert copy.endswith(theirs + rest) and b"header.d=bank.test" not in copy


def test_forwarded_copy_is_arc_sealed(mx, dns):
    publish_our_key(mx, dns)
    msg = sign(message("alice@sender.test", b"for the alias\r\n"), "sender.test")
    assert mx.send("fwd@example.test", msg, sender="bounces@sender.test") == {}
    [queued] = [m for m in mx.spool().list()
                if m.recipients[0].address == "kim@elsewhere.invalid"]
    forwarded = mx.spool().read_message(queued.id)
    assert forwarded.endswith(msg)  # the original signature is untouched
    parsed = email.message_from_bytes(forwarded)
    aar = " ".join(parsed["ARC-Authentication-Results"].split())
    assert aar.startswith(f"i=1; {HOST}; spf=pass smtp.mailfrom=sender.test")
    assert "dmarc=pass header.from=sender.test" in aar and aar.endswith("arc=none")
    assert "cv=none" in parsed["ARC-Seal"] and "d=example.test" in parsed["ARC-Seal"]

    resolver = dns.resolver()

    def dnsfunc(name, timeout=5):
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except Exception:
            return None
        return b"".join(answer[0].strings)

    cv, sets, reason = dkim.arc_verify(forwarded, dnsfunc=dnsfunc)
    assert (cv, reason) == (dkim.CV_Pass, "success")
    assert dkim.verify(forwarded, dnsfunc=dnsfunc)


def test_submission_is_not_checked(mx):
    """Authenticated submission is ours: no SPF/DKIM/DMARC verdict is added."""
    mx.submit("ann@example.test", "ann@example.test",
              b"From: ann@example.test\r\nTo: ann@example.test\r\nSubject: note\r\n\r\nx\r\n")
    [stored] = [m for m in mx.messages("ann@example.test") if b"Subject: note" in m]
    assert auth_results(stored) == []
