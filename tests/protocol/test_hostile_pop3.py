"""Hostile POP3 clients over real sockets: STLS injection and passwords in the clear on 110,
overlong lines, NUL bytes, slowloris before login, and a second user's maildrop.
(test_pop3.py covers the protocol itself.)"""

from __future__ import annotations

import base64
import socket
import time

import pytest

from tests.support.imap import lines_until_closed
from tests.support.instance import PASSWORD, Instance

USER = "pat@example.test"
OTHER = "quinn@example.test"


@pytest.fixture(scope="module")
def inst(tmp_path_factory, dns_server):
    i = Instance(tmp_path_factory.mktemp("hostile-pop3"), dns_server.nameserver,
                 # Small login delays: the NUL tests fail logins, and later ones would wait.
                 extra_config="auth_failure_delay = 0.05\n[pop3]\nlogin_timeout = 2\n")
    i.add_user(USER)
    i.add_user(OTHER)
    i.start()
    i.send(OTHER, b"From: bob@remote.test\r\nSubject: for quinn\r\n\r\nprivate\r\n")
    yield i
    i.stop()


class Raw:
    def __init__(self, inst: Instance, port: str = "pop3", timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", inst.ports[port]), timeout=timeout)
        if port == "pop3s":
            self.sock = inst.tls_context().wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.greeting = self.line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, text: str | bytes) -> bytes:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.line()

    def rest(self) -> list[bytes]:
        return lines_until_closed(self.line)

    def starttls(self, inst: Instance) -> None:
        self.sock = inst.tls_context().wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""


def tls_session(inst) -> Raw:
    r = Raw(inst)
    assert r.cmd("STLS").startswith(b"+OK")
    r.starttls(inst)
    return r


# --- STLS injection, passwords before TLS ---


def test_stls_injection_is_not_executed(inst):
    """USER/PASS pipelined in the clear after STLS never run inside TLS: the server hangs up
    on a client that did not wait for the +OK (server.py, CVE-2011-0411)."""
    mark = len(inst.log())
    with Raw(inst) as r:
        r.send(f"STLS\r\nUSER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\n")
        lines = r.rest()
    assert lines[:1] == [b"+OK Begin TLS negotiation"]
    assert not any(line.startswith(b"+OK") for line in lines[1:])
    assert f"login user={USER}" not in inst.log()[mark:]


def test_after_stls_the_session_starts_unauthenticated(inst):
    with tls_session(inst) as r:
        assert r.cmd("STAT").startswith(b"-ERR")
        assert r.cmd("STLS").startswith(b"-ERR")  # not twice (RFC 2595 §4)
        assert r.cmd(f"USER {USER}").startswith(b"+OK")
        assert r.cmd(f"PASS {PASSWORD}").startswith(b"+OK")


@pytest.mark.parametrize("commands", [
    [f"USER {USER}", "PASS wrong"],
    ["PASS wrong"],
    ["AUTH PLAIN " + base64.b64encode(f"\0{USER}\0wrong".encode()).decode()],
    ["AUTH PLAIN"],
    [f"APOP {USER} c4c9334bac560ecc979e58001b3e22fb"],
    [f"USER {USER}", f"PASS {PASSWORD}"],  # the right one too: it crossed in the clear
])
def test_passwords_before_tls_refused_unchecked(inst, commands):
    mark = len(inst.log())
    with Raw(inst) as r:
        for _ in range(3):  # were they checked, the third round would be slowed and logged
            for command in commands:
                started = time.monotonic()
                reply = r.cmd(command)
                assert reply.startswith(b"-ERR"), (command, reply)
                assert time.monotonic() - started < 0.5
        assert b"+ " not in r.buf  # no AUTH continuation was offered in the clear
        assert r.cmd("STAT").startswith(b"-ERR")
    log = inst.log()[mark:]
    assert USER not in log  # neither a failed nor a successful login was logged


# --- overlong lines and NUL bytes ---


@pytest.mark.parametrize("size", [300, 1100, 5000, 1024 * 1024])
def test_overlong_lines(inst, size):
    """RFC 2449 §4 allows 255 octets; we take up to 1 KiB, refuse longer lines whole with one
    -ERR, and stay in step however long the line."""
    with Raw(inst) as r:
        reply = r.cmd(b"CAPA " + b"x" * size)
        if size <= 1000:
            assert reply.startswith((b"+OK", b"-ERR"))
            if reply.startswith(b"+OK"):
                while r.line() != b".":
                    pass
        else:
            assert reply == b"-ERR Line too long"
        assert r.cmd("NOOP").startswith(b"-ERR")  # one answer per line: still in step
        assert r.cmd("QUIT").startswith(b"+OK")


@pytest.mark.parametrize("commands", [
    [f"USER {USER}\x00", f"PASS {PASSWORD}"],
    [f"USER {USER}\x00{OTHER}", f"PASS {PASSWORD}"],
    [f"USER {USER}", f"PASS {PASSWORD}\x00"],
    [f"USER {USER}", f"PASS \x00{PASSWORD}"],
    ["AUTH PLAIN " + base64.b64encode(f"\0{USER}\0{PASSWORD}\0extra".encode()).decode()],
    ["AUTH PLAIN " + base64.b64encode(f"{OTHER}\0{USER}\0{PASSWORD}".encode()).decode()],
    ["\x00USER " + USER, f"PASS {PASSWORD}"],
])
def test_nul_bytes_log_nobody_in(inst, commands):
    with tls_session(inst) as r:
        replies = [r.cmd(command.encode()) for command in commands]
        assert replies[-1].startswith(b"-ERR"), replies
        assert r.cmd("STAT").startswith(b"-ERR")


def test_a_login_is_for_its_own_maildrop_only(inst):
    with tls_session(inst) as r:
        r.cmd(f"USER {USER}")
        assert r.cmd(f"PASS {PASSWORD}").startswith(b"+OK")
        assert r.cmd("STAT") == b"+OK 0 0"  # quinn's message is not here
        assert r.cmd("RETR 1").startswith(b"-ERR")
        assert r.cmd("USER " + OTHER).startswith(b"-ERR")  # no second login on the session
        assert r.cmd("QUIT").startswith(b"+OK")
    assert len(inst.messages(OTHER)) == 1


# --- slowloris ---


@pytest.mark.parametrize("port", ["pop3", "pop3s", "stls"])
@pytest.mark.parametrize("trickle", [b"CAPA\r\n", b"C"], ids=["lines", "bytes"])
def test_slowloris_before_login_is_closed(inst, port, trickle):
    """[pop3] login_timeout = 2 bounds the time to log in, however the client keeps the
    connection busy: whole CAPA lines (each answered) or single bytes; over TLS too, where
    the server's goodbye (close_notify) goes unanswered."""
    with Raw(inst, "pop3" if port == "stls" else port) as r:
        started = time.monotonic()
        if port == "stls":
            assert r.cmd("STLS").startswith(b"+OK")
            r.sock = inst.tls_context().wrap_socket(r.sock, server_hostname="localhost")
        with pytest.raises(OSError):
            while time.monotonic() - started < 8:
                r.send(trickle)
                time.sleep(0.4)
            pytest.fail("still open after 8 s")
        assert time.monotonic() - started < 5


def test_logged_in_session_outlives_the_login_timeout(inst):
    with tls_session(inst) as r:
        r.cmd(f"USER {USER}")
        assert r.cmd(f"PASS {PASSWORD}").startswith(b"+OK")
        time.sleep(2.5)
        assert r.cmd("STAT").startswith(b"+OK")
        assert r.cmd("QUIT").startswith(b"+OK")
