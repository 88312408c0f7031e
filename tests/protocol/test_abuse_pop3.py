"""Password guessing over POP3 (USER/PASS and AUTH PLAIN), and POP3's per-IP connection cap."""

from __future__ import annotations

import base64
import poplib

import pytest

from tests.support.abuse import (
    BAN_AFTER,
    PASSWORD,
    POP3,
    WRONG,
    assert_growing,
    connect,
    eventually,
    first_line,
    source,
    timed,
)

USER = "paul@example.test"  # in tests.support.abuse.USERS


@pytest.fixture
def inst(abuse_instance):
    return abuse_instance


def user_pass(p: POP3, password: str):
    p.user(USER)
    return p.pass_(password)


def test_guessing_slows_down_then_bans_the_client(inst):
    ip = source(21)
    p = POP3(inst, ip)
    waits = []
    for _ in range(BAN_AFTER):
        took, result = timed(user_pass, p, WRONG)
        assert isinstance(result, poplib.error_proto) and b"[AUTH]" in result.args[0]
        waits.append(took)
    assert_growing(waits)
    # No further guess on the connection it holds (it is closed after the answer)...
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Too many failed logins"):
        user_pass(p, PASSWORD)
    # ...nor on a new one, on any service.
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Too many failed logins"):
        POP3(inst, ip)
    assert first_line(inst, "imap", ip).startswith(b"* BYE [UNAVAILABLE]")
    assert first_line(inst, "submission", ip).startswith(b"421 4.7.0")
    log = inst.wait_for_log(f"ban rhost={ip} ")
    assert f'auth failure service=pop3 rhost={ip} user="{USER}"' in log
    p = POP3(inst, source(22))  # another client
    assert user_pass(p, PASSWORD).startswith(b"+OK")
    p.quit()


def test_auth_plain_counts_too(inst):
    ip = source(23)
    with connect(inst, "pop3s", ip) as raw, \
            inst.tls_context().wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"+OK")
        for i in range(BAN_AFTER):
            blob = base64.b64encode(f"\0pop-guess{i}@example.test\0{WRONG}".encode())
            sock.sendall(b"AUTH PLAIN " + blob + b"\r\n")
            assert f.readline().startswith(b"-ERR [AUTH]")
        sock.sendall(b"AUTH PLAIN " + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
                     + b"\r\n")
        assert f.readline().startswith(b"-ERR [SYS/TEMP] Too many failed logins")
        assert f.readline() == b""  # and hung up


def test_concurrent_connections(inst):
    ip = source(24)
    held = [POP3(inst, ip) for _ in range(3)]  # [abuse] max_connections_per_ip
    assert first_line(inst, "pop3", ip).startswith(b"+OK")  # another service: its own count
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Too many connections"):
        POP3(inst, ip)
    held.pop().quit()
    eventually(lambda: POP3(inst, ip).quit())
    for p in held:
        p.quit()
