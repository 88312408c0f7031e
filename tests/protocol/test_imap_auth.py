"""IMAP connection states, TLS and authentication (RFC 3501 §6.1-6.2, RFC 4959, RFC 5530)."""

from __future__ import annotations

import base64
import imaplib
import socket

import pytest

from tests.support.imap import PASSWORD, Raw, client


@pytest.fixture(scope="module")
def inst(mx):
    mx.add_user("ivan@example.test")
    return mx


def plain(user: str, password: str = PASSWORD) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_plaintext_port_offers_starttls_and_disables_login(inst):
    c = imaplib.IMAP4("127.0.0.1", inst.ports["imap"], timeout=10)
    assert "STARTTLS" in c.capabilities and "LOGINDISABLED" in c.capabilities
    assert not any(cap.startswith("AUTH=") for cap in c.capabilities)
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        c.login("ivan@example.test", PASSWORD)
    c.starttls(ssl_context=inst.tls_context())
    caps = c.capability()[1][0].decode().split()
    assert "AUTH=PLAIN" in caps and "LOGINDISABLED" not in caps and "STARTTLS" not in caps
    assert c.login("ivan@example.test", PASSWORD)[0] == "OK"
    c.logout()


def test_login_before_tls_is_refused_with_privacyrequired(inst):
    sock = socket.create_connection(("127.0.0.1", inst.ports["imap"]), timeout=10)
    sock.recv(4096)
    sock.sendall(f'a LOGIN ivan@example.test "{PASSWORD}"\r\n'.encode())
    reply = sock.recv(4096)
    sock.close()
    assert reply.startswith(b"a NO [PRIVACYREQUIRED]")


def test_implicit_tls_and_capabilities_after_login(inst):
    c = client(inst)
    assert "AUTH=PLAIN" in c.capabilities
    typ, data = c.login("ivan@example.test", PASSWORD)
    assert typ == "OK" and b"[CAPABILITY" in data[0] and b"IDLE" in data[0]
    caps = c.capability()[1][0].decode().split()
    for cap in ("IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE", "CONDSTORE", "NAMESPACE",
                "LITERAL+", "ENABLE", "ID", "UNSELECT", "LIST-EXTENDED", "LIST-STATUS"):
        assert cap in caps, cap
    c.logout()


def test_authenticate_plain_with_and_without_initial_response(inst):
    with Raw(inst) as r:
        _, done = r.cmd("a", f"AUTHENTICATE PLAIN {plain('ivan@example.test')}")
        assert done.startswith(b"a OK [CAPABILITY")
    with Raw(inst) as r:
        r.send("b AUTHENTICATE PLAIN\r\n")
        assert r.line() == b"+ "
        r.send(plain("ivan@example.test") + "\r\n")
        _, done = r.until("b")
        assert done.startswith(b"b OK")
    with Raw(inst) as r:
        r.send("c AUTHENTICATE PLAIN\r\n")
        r.line()
        r.send("*\r\n")
        _, done = r.until("c")
        assert done.startswith(b"c BAD")


def test_wrong_password(inst):
    with Raw(inst) as r:
        _, done = r.cmd("a", 'LOGIN ivan@example.test "not it"')
        assert done.startswith(b"a NO [AUTHENTICATIONFAILED]")
        _, done = r.cmd("b", f"AUTHENTICATE PLAIN {plain('nobody@example.test')}")
        assert done.startswith(b"b NO [AUTHENTICATIONFAILED]")
    assert "not it" not in inst.log() and PASSWORD not in inst.log()


def test_commands_need_the_right_state(inst):
    with Raw(inst) as r:
        _, done = r.cmd("a", "SELECT INBOX")
        assert done.startswith(b"a BAD")
        r.login("ivan@example.test")
        _, done = r.cmd("b", "FETCH 1 FLAGS")
        assert done.startswith(b"b BAD")
        _, done = r.cmd("c", f'LOGIN ivan@example.test "{PASSWORD}"')
        assert done.startswith(b"c BAD")


def test_id_namespace_enable_noop_logout(inst):
    with Raw(inst) as r:
        lines, done = r.cmd("a", 'ID ("name" "test")')
        assert lines[0].startswith(b'* ID ("name" "mailstead"') and done.startswith(b"a OK")
        r.login("ivan@example.test")
        lines, _ = r.cmd("b", "NAMESPACE")
        assert lines == [b'* NAMESPACE (("" "/")) NIL NIL']
        lines, _ = r.cmd("c", "ENABLE CONDSTORE")
        assert lines == [b"* ENABLED CONDSTORE"]
        _, done = r.cmd("d", "NOOP")
        assert done.startswith(b"d OK")
        lines, done = r.cmd("e", "LOGOUT")
        assert lines[0].startswith(b"* BYE") and done.startswith(b"e OK")
        assert r.closed()


def test_garbage_gets_bad_and_the_session_survives(inst):
    with Raw(inst) as r:
        for line in ("a FROB", "b FETCH", "* NOOP", "c LOGIN"):
            r.send(line + "\r\n")
            assert b"BAD" in r.line()
        _, done = r.cmd("d", "NOOP")
        assert done.startswith(b"d OK")


def test_too_many_bad_commands_close_the_connection(inst):
    with Raw(inst) as r:
        for i in range(20):
            r.send(f"x{i} FROB\r\n")
        lines = [r.line() for _ in range(21)]
        assert lines[-1].startswith(b"* BYE")
        assert r.closed()


def test_starttls_injection_is_not_executed(inst):
    """Commands pipelined in the clear after STARTTLS must not run inside TLS."""
    sock = socket.create_connection(("127.0.0.1", inst.ports["imap"]), timeout=10)
    sock.recv(4096)
    sock.sendall(b"a STARTTLS\r\nb CAPABILITY\r\n")
    data = b""
    try:
        while b"a OK" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        more = sock.recv(4096)  # the server hangs up rather than run "b" in TLS
    except (ConnectionResetError, TimeoutError):
        more = b""
    sock.close()
    assert b"b OK" not in data + more and b"* CAPABILITY" not in data + more
