"""POP3 (RFC 1939, 2449, 2595, 5034) over real sockets, alongside IMAP and new deliveries."""

from __future__ import annotations

import base64
import poplib
import socket
import time

import pytest

from tests.support.imap import Raw as ImapRaw
from tests.support.imap import deliver
from tests.support.instance import PASSWORD


@pytest.fixture
def user(mx, request):
    address = f"p{abs(hash(request.node.name)) % 10**8}@example.test"
    mx.add_user(address)
    return address


def pop(mx, user=None, implicit_tls=True) -> poplib.POP3:
    if implicit_tls:
        p = poplib.POP3_SSL("127.0.0.1", mx.ports["pop3s"], context=mx.tls_context(),
                            timeout=15)
    else:
        p = poplib.POP3("127.0.0.1", mx.ports["pop3"], timeout=15)
        p.stls(context=mx.tls_context())
    if user is not None:
        p.user(user)
        p.pass_(PASSWORD)
    return p


class Raw:
    def __init__(self, mx, port_name="pop3s"):
        sock = socket.create_connection(("127.0.0.1", mx.ports[port_name]), timeout=15)
        if port_name == "pop3s":
            sock = mx.tls_context().wrap_socket(sock, server_hostname="localhost")
        self.sock, self.buf = sock, b""
        self.greeting = self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, text: str | bytes) -> bytes:
        self.sock.sendall((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.line()

    def close(self):
        self.sock.close()


def test_stls_user_pass_and_capa(mx, user):
    p = poplib.POP3("127.0.0.1", mx.ports["pop3"], timeout=15)
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps and "SASL" not in caps
    with pytest.raises(poplib.error_proto, match="STLS first"):
        p.user(user)
    p.stls(context=mx.tls_context())
    caps = p.capa()
    assert {"USER", "TOP", "UIDL", "RESP-CODES", "PIPELINING"} <= set(caps)
    assert caps["SASL"] == ["PLAIN"] and "STLS" not in caps
    p.user(user)
    assert p.pass_(PASSWORD).startswith(b"+OK")
    p.quit()


def test_pop3s_auth_plain_with_and_without_initial_response(mx, user):
    blob = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    r = Raw(mx)
    assert r.cmd(f"AUTH PLAIN {blob}").startswith(b"+OK")
    r.close()
    r = Raw(mx)
    assert r.cmd("AUTH PLAIN") == b"+ "
    assert r.cmd(blob).startswith(b"+OK")
    r.close()
    r = Raw(mx)
    bad = base64.b64encode(f"\0{user}\0nope".encode()).decode()
    assert r.cmd(f"AUTH PLAIN {bad}").startswith(b"-ERR [AUTH]")
    r.close()


def test_transaction_commands(mx, user):
    deliver(mx, user, "first", "line one\r\n.starts with a dot\r\nlast line")
    deliver(mx, user, "second")
    stored = mx.messages(user)
    p = pop(mx, user)
    assert p.stat() == (2, sum(len(m) for m in stored))
    _, listing, _ = p.list()
    assert listing == [f"1 {len(stored[0])}".encode(), f"2 {len(stored[1])}".encode()]
    _, lines, octets = p.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == stored[0]  # byte-exact once un-dot-stuffed
    assert b".starts with a dot" in lines
    _, top, _ = p.top(1, 1)
    assert top[-1] == b"line one" and b"Subject: first" in top
    assert p.dele(2).startswith(b"+OK")
    with pytest.raises(poplib.error_proto):
        p.retr(2)
    assert p.stat()[0] == 1
    p.rset()
    assert p.stat()[0] == 2
    assert p.noop().startswith(b"+OK")
    p.quit()
    assert len(mx.messages(user)) == 2  # RSET undid the DELE


def test_uidl_is_stable_and_independent_of_imap(mx, user):
    deliver(mx, user, "a")
    deliver(mx, user, "b")
    p = pop(mx, user)
    first = p.uidl()[1]
    p.quit()
    with ImapRaw(mx) as i:
        i.login(user)
        i.cmd("s", "SELECT INBOX")
        i.cmd("f", "STORE 1 +FLAGS (\\Flagged $Junk)")
        i.cmd("m", "COPY 1 Archive")
    p = pop(mx, user)
    assert p.uidl()[1] == first
    p.quit()


def test_snapshot_and_deletion_only_at_quit(mx, user):
    deliver(mx, user, "before")
    p = pop(mx, user)
    deliver(mx, user, "during")  # not in this session's maildrop (RFC 1939 §8)
    assert p.stat()[0] == 1
    p.dele(1)
    p.file.close()
    p.sock.close()  # gone without QUIT: nothing is deleted
    time.sleep(0.3)
    assert len(mx.messages(user)) == 2
    p = pop(mx, user)
    assert p.stat()[0] == 2
    p.dele(1)
    p.quit()
    assert [m for m in mx.messages(user) if b"Subject: before" in m] == []


def test_retr_marks_seen_and_imap_sees_pop3_deletions(mx, user):
    deliver(mx, user, "read by pop")
    deliver(mx, user, "deleted by pop")
    with ImapRaw(mx) as i:
        i.login(user)
        i.cmd("s", "SELECT INBOX")
        p = pop(mx, user)
        p.retr(1)
        p.dele(2)
        p.quit()
        lines, _ = i.cmd("n", "NOOP")
        assert b"* 2 EXPUNGE" in lines
        assert b"* 1 FETCH (FLAGS (\\Seen))" in lines


def test_retr_of_a_message_another_program_renamed_meanwhile(mx, user):
    # RETR reads a small message on the event loop from the name the index has; a file
    # renamed since (a flag set by another program) is then found in a worker thread.
    import os

    deliver(mx, user, "renamed under pop")
    p = pop(mx, user)
    box = mx.maildir(user)._path
    for sub in ("new", "cur"):
        for name in os.listdir(f"{box}/{sub}"):
            os.rename(f"{box}/{sub}/{name}", f"{box}/cur/{name.partition(':')[0]}:2,F")
    _, lines, _ = p.retr(1)
    assert b"Subject: renamed under pop" in lines
    p.quit()


def test_retr_is_marked_seen_when_the_client_hangs_up_without_quit(mx, user):
    deliver(mx, user, "read, then the line dropped")
    deliver(mx, user, "not read")
    p = pop(mx, user)
    p.retr(1)
    p.sock.shutdown(socket.SHUT_RDWR)  # no QUIT: nothing is deleted, what was read stays read
    p.close()
    deadline = time.monotonic() + 5
    with ImapRaw(mx) as i:
        i.login(user)
        while True:
            i.cmd("s", "EXAMINE INBOX")
            lines, _ = i.cmd("f", "FETCH 1:* (FLAGS)")
            if b"* 1 FETCH (FLAGS (\\Seen))" in lines or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert lines[:2] == [b"* 1 FETCH (FLAGS (\\Seen))", b"* 2 FETCH (FLAGS ())"]


def test_one_pop3_session_per_user(mx, user):
    p = pop(mx, user)
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        pop(mx, user)
    with ImapRaw(mx) as i:  # IMAP carries on meanwhile
        i.login(user)
        assert i.cmd("s", "SELECT INBOX")[1].startswith(b"s OK")
    p.quit()
    pop(mx, user).quit()  # free again


def test_bad_input(mx, user):
    r = Raw(mx)
    assert r.cmd("FROB").startswith(b"-ERR")
    assert r.cmd("STAT").startswith(b"-ERR")  # not before login
    assert r.cmd("X" * 5000).startswith(b"-ERR")
    assert r.cmd("NOOP").startswith(b"-ERR")
    assert r.cmd(f"USER {user}").startswith(b"+OK")
    assert r.cmd(f"PASS {PASSWORD}").startswith(b"+OK")
    assert r.cmd("RETR 99").startswith(b"-ERR")
    assert r.cmd("TOP 1").startswith(b"-ERR")
    assert r.cmd("QUIT").startswith(b"+OK")
    r.close()


def test_login_timeout(fresh):
    fresh.append_config("[pop3]\nlogin_timeout = 1")
    fresh.start()
    r = Raw(fresh)
    time.sleep(1.5)
    assert r.line().startswith(b"-ERR [SYS/TEMP] Autologout")
    r.close()


def test_idle_timeout_counts_from_each_command(fresh):
    fresh.add_user("slow@example.test")
    fresh.append_config("[pop3]\nidle_timeout = 1")
    fresh.start()
    r = Raw(fresh)
    assert r.cmd("USER slow@example.test").startswith(b"+OK")
    assert r.cmd(f"PASS {PASSWORD}").startswith(b"+OK")
    for _ in range(3):  # a command every 0.6 s keeps it
        time.sleep(0.6)
        assert r.cmd("NOOP").startswith(b"+OK")
    assert r.line().startswith(b"-ERR [SYS/TEMP] Autologout")  # then a silent second ends it
    r.close()


def test_stls_injection_is_not_executed(mx, user):
    sock = socket.create_connection(("127.0.0.1", mx.ports["pop3"]), timeout=10)
    sock.recv(4096)
    sock.sendall(f"STLS\r\nUSER {user}\r\n".encode())
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    assert data.count(b"+OK") <= 1 and b"Send PASS" not in data


def test_failed_logins_are_slowed(fresh):
    fresh.add_user("guess@example.test")
    text = fresh.config_path.read_text().replace("[accounts]\n",
                                                 "[accounts]\nauth_failure_delay = 0.4\n", 1)
    fresh.config_path.write_text(text)
    fresh.start()
    r = Raw(fresh)
    timings = []
    for _ in range(4):
        r.cmd("USER guess@example.test")
        started = time.monotonic()
        assert r.cmd("PASS wrong").startswith(b"-ERR [AUTH]")
        timings.append(time.monotonic() - started)
    r.close()
    assert max(timings[:2]) < 0.35 and timings[2] >= 0.35 and timings[3] >= 0.75
