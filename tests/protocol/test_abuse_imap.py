"""Password guessing over IMAP: growing delays, then a ban of the client on every service."""

from __future__ import annotations

import imaplib

import pytest

from tests.support.abuse import (
    BAN_AFTER,
    IMAP,
    PASSWORD,
    WRONG,
    assert_growing,
    eventually,
    first_line,
    source,
    timed,
)

USER = "ivy@example.test"  # in tests.support.abuse.USERS


@pytest.fixture
def inst(abuse_instance):
    return abuse_instance


def test_guessing_slows_down_then_bans_the_client(inst):
    ip = source(11)
    c = IMAP(inst, ip)
    waits = []
    for _ in range(BAN_AFTER):
        took, result = timed(c.login, USER, WRONG)
        assert isinstance(result, imaplib.IMAP4.error) and "AUTHENTICATIONFAILED" in str(result)
        waits.append(took)
    assert_growing(waits)
    # The connection it holds gets no further guess, not even the right password...
    with pytest.raises(imaplib.IMAP4.abort, match="UNAVAILABLE"):
        c.login(USER, PASSWORD)
    # ...and new connections, to any service, are refused before the greeting.
    with pytest.raises(imaplib.IMAP4.error, match="Too many failed logins"):
        IMAP(inst, ip)
    assert first_line(inst, "imap", ip).startswith(b"* BYE [UNAVAILABLE]")
    assert first_line(inst, "pop3", ip).startswith(b"-ERR [SYS/TEMP] Too many failed logins")
    assert first_line(inst, "mx", ip).startswith(b"421 4.7.0 Too many failed logins")
    log = inst.wait_for_log(f"ban rhost={ip} ")
    assert f'auth failure service=imap rhost={ip} user="{USER}"' in log
    f2b = (inst.data_dir / "fail2ban.log").read_text()
    assert f2b.count(f"rhost={ip} ") == BAN_AFTER + 1  # the failures and the ban
    # Another client is not affected.
    c = IMAP(inst, source(12))
    assert c.login(USER, PASSWORD)[0] == "OK"
    c.logout()


def test_authenticate_plain_counts_too(inst):
    ip = source(13)
    c = IMAP(inst, ip)
    for i in range(BAN_AFTER):
        with pytest.raises(imaplib.IMAP4.error):
            c.authenticate("PLAIN", lambda _, i=i: f"\0ig{i}@example.test\0{WRONG}".encode())
    with pytest.raises(imaplib.IMAP4.abort):  # imaplib reads on after the BYE, to EOF
        c.authenticate("PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode())
    assert b"[UNAVAILABLE]" in c.untagged_responses["BYE"][-1]
    assert first_line(inst, "imap", ip).startswith(b"* BYE [UNAVAILABLE]")



def test_connection_rate_per_minute(inst):
    ip = source(14)
    for _ in range(12):  # [abuse] connection_rate_per_ip
        assert first_line(inst, "imap", ip).startswith(b"* OK")
    assert first_line(inst, "imap", ip) == \
        b"* BYE [UNAVAILABLE] Too many connections per minute, try again later"
    assert first_line(inst, "pop3", ip).startswith(b"+OK")  # each service counts for itself
    assert "refused service=imap rhost=127.0.0.14 reason=rate" in inst.log()


def test_concurrent_connections(inst):
    ip = source(15)
    held = [IMAP(inst, ip) for _ in range(3)]  # [abuse] max_connections_per_ip
    with pytest.raises(imaplib.IMAP4.error, match="Too many connections"):
        IMAP(inst, ip)
    held.pop().logout()
    eventually(lambda: IMAP(inst, ip).logout())  # a slot is free again, once the server saw it
    for c in held:
        c.logout()
