"""Spam handling through the real MX: rspamd's verdict files mail into Junk or refuses it,
a DNSBL-listed client is refused at MAIL, and greylisting defers a first attempt."""

from __future__ import annotations

import smtplib
import time

import pytest

from tests.conftest import require_tool
from tests.support.instance import Instance
from tests.support.rspamd import GTUBE, GTUBE_ADD_HEADER, Rspamd

PROSE = ("Hello Alice,\r\n\r\nThe minutes of Tuesday's meeting are below; the budget line for "
         "the library stays as agreed.\r\n\r\nBest,\r\nBob\r\n")


def message(subject: str, body: str, msgid: str) -> bytes:
    return (f"From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{msgid}@remote.test>\r\nDate: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
            f"\r\n{body}").encode()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, dns_server):
    require_tool("rspamd")
    root = tmp_path_factory.mktemp("mxspam")
    with Rspamd(root / "rspamd", dns_server.nameserver, redis=False) as rspamd:
        inst = Instance(root / "mx", dns_server.nameserver)
        inst.append_config(rspamd.spam_toml())
        inst.add_user("alice@example.test")
        inst.start()
        try:
            yield inst
        finally:
            inst.stop()


def test_add_header_spam_is_filed_into_junk_with_the_score(lab):
    with lab.smtp() as c:
        c.sendmail("bob@remote.test", ["alice@example.test"],
                   message("Offer", GTUBE_ADD_HEADER + "\r\n" + PROSE, "junk1"))
    [junk] = [m for m in lab.parsed("alice@example.test", "Junk")
              if m["Message-ID"] == "<junk1@remote.test>"]
    assert junk["X-Spam-Status"].startswith("Yes")
    assert float(junk["X-Spam-Score"]) >= 6
    assert all(m["Message-ID"] != "<junk1@remote.test>" for m in lab.parsed("alice@example.test"))


def test_gtube_is_refused_and_nothing_is_delivered(lab):
    before = len(lab.messages("alice@example.test"))
    with lab.smtp() as c, pytest.raises(smtplib.SMTPDataError) as info:
        c.sendmail("bob@remote.test", ["alice@example.test"],
                   message("Spam", GTUBE + "\r\n" + PROSE, "spam1"))
    assert info.value.smtp_code == 550 and b"5.7.1" in info.value.smtp_error
    assert len(lab.messages("alice@example.test")) == before


def test_clean_mail_reaches_the_inbox_scored(lab):
    with lab.smtp() as c:
        c.sendmail("bob@remote.test", ["alice@example.test"],
                   message("Minutes", PROSE, "ham1"))
    [ham] = [m for m in lab.parsed("alice@example.test")
             if m["Message-ID"] == "<ham1@remote.test>"]
    assert ham["X-Spam-Status"].startswith("No")
    # One Authentication-Results of ours above the spam headers: the whole verdict is there.
    assert ham["Authentication-Results"].startswith("mail.example.test")


def test_dnsbl_listed_client_is_refused_at_mail(tmp_path, dns_server):
    dns_server.add_zone("bl.test")
    dns_server.set("1.0.0.127.bl.test", "A", "127.0.0.2")
    dns_server.set("1.0.0.127.bl.test", "TXT", "listed for testing")
    try:
        inst = Instance(tmp_path, dns_server.nameserver, extra_config=(
            '[spam]\ndnsbl_zones = ["bl.test"]\n[abuse]\nallow = []\n'))
        inst.add_user("alice@example.test")
        inst.start()
        try:
            with inst.smtp() as c:
                c.ehlo()
                code, text = c.mail("bob@remote.test")
            assert code == 554 and b"bl.test" in text and b"5.7.1" in text
            assert inst.messages("alice@example.test") == []
        finally:
            inst.stop()
    finally:
        dns_server.delete("1.0.0.127.bl.test")


def test_greylisting_defers_the_first_attempt(tmp_path, dns_server):
    inst = Instance(tmp_path, dns_server.nameserver, extra_config=(
        "[spam]\ngreylisting = true\ngreylist_delay = 1.0\n[abuse]\nallow = []\n"))
    inst.add_user("alice@example.test")
    inst.start()
    try:
        with inst.smtp() as c:
            c.ehlo()
            c.mail("bob@remote.test")
            code, text = c.rcpt("alice@example.test")
            assert code == 451 and b"4.7.1" in text
            c.rset()
            c.mail("bob@remote.test")
            assert c.rcpt("alice@example.test")[0] == 451  # too soon
        time.sleep(1.2)
        with inst.smtp() as c:
            c.sendmail("bob@remote.test", ["alice@example.test"],
                       message("Hi", PROSE, "grey1"))
        assert len(inst.messages("alice@example.test")) == 1
    finally:
        inst.stop()
