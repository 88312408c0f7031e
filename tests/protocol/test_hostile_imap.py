"""Hostile IMAP clients over real sockets: STARTTLS injection and LOGIN in the clear on 143,
overlong lines and literals, NUL bytes, slowloris before login, and mailbox names that try to
leave the user's Maildir — checked on the filesystem, for the attacker's tree and a second
user's. (test_imap_hostile.py covers limits and odd situations of well-meaning clients.)
"""

from __future__ import annotations

import base64
import os
import socket
import time
from pathlib import Path

import pytest

from server.imap import mutf7
from tests.support.imap import Raw
from tests.support.instance import PASSWORD, Instance

ATTACKER = "mallory@example.test"
VICTIM = "alice@example.test"


@pytest.fixture(scope="module")
def inst(tmp_path_factory, dns_server):
    i = Instance(tmp_path_factory.mktemp("hostile-imap"), dns_server.nameserver,
                 # Small login delays: the NUL tests fail logins, and later ones would wait.
                 extra_config="auth_failure_delay = 0.05\n"
                              "[imap]\nlogin_timeout = 2\nmax_literal = 100000\n")
    i.add_user(ATTACKER)
    i.add_user(VICTIM)
    i.start()
    i.send(VICTIM, b"From: bob@remote.test\r\nSubject: private\r\n\r\nfor alice only\r\n")
    yield i
    i.stop()


class Plain(Raw):
    """A raw IMAP session on the STARTTLS port, in the clear until ``starttls``."""

    def __init__(self, inst: Instance, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", inst.ports["imap"]), timeout=timeout)
        self.buf = b""
        self.greeting = self.line()

    def starttls(self, inst: Instance) -> None:
        self.sock = inst.tls_context().wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""


def logged_in(inst) -> Raw:
    r = Raw(inst)
    r.login(ATTACKER)
    return r


# --- STARTTLS injection, LOGIN before TLS ---


def test_starttls_injection_is_not_executed(inst):
    """A LOGIN pipelined in the clear after STARTTLS never runs inside TLS: the server hangs
    up on a client that did not wait (connection.py), so nothing it sent is taken."""
    mark = len(inst.log())
    with Plain(inst) as r:
        r.send(f'a STARTTLS\r\nb LOGIN {ATTACKER} "{PASSWORD}"\r\nc SELECT INBOX\r\n')
        lines = r.lines_until_closed()
    assert lines == [b"a OK Begin TLS negotiation now"]
    assert f"login user={ATTACKER}" not in inst.log()[mark:]


def test_starttls_then_the_session_starts_unauthenticated(inst):
    with Plain(inst) as r:
        assert r.cmd("a", "STARTTLS")[1].startswith(b"a OK")
        r.starttls(inst)
        _, done = r.cmd("b", "SELECT INBOX")
        assert done.startswith(b"b BAD")  # not authenticated: nothing rode along
        lines, _ = r.cmd("c", "CAPABILITY")
        assert b"STARTTLS" not in lines[0] and b"LOGINDISABLED" not in lines[0]


@pytest.mark.parametrize("command", [
    f'LOGIN {VICTIM} "wrong password"',
    "AUTHENTICATE PLAIN " + base64.b64encode(f"\0{VICTIM}\0wrong".encode()).decode(),
    f'LOGIN {VICTIM} "{PASSWORD}"',  # the right password is refused too: it crossed in clear
])
def test_login_before_tls_refused_unchecked(inst, command):
    mark = len(inst.log())
    with Plain(inst) as r:
        assert b"LOGINDISABLED" in r.greeting
        for i in range(4):  # were they checked, the third would wait and be logged
            started = time.monotonic()
            _, done = r.cmd(f"t{i}", command)
            assert done.startswith(f"t{i} NO [PRIVACYREQUIRED]".encode()), done
            assert time.monotonic() - started < 0.5
        _, done = r.cmd("s", "SELECT INBOX")
        assert done.startswith(b"s BAD")
    assert VICTIM not in inst.log()[mark:]  # neither a failed nor a successful login


def test_authenticate_without_initial_response_before_tls(inst):
    """No "+ " continuation in the clear: the password would follow it unencrypted."""
    with Plain(inst) as r:
        r.send("a AUTHENTICATE PLAIN\r\n")
        assert r.line().startswith(b"a NO [PRIVACYREQUIRED]")


# --- overlong lines and literals, NUL bytes ---


@pytest.mark.parametrize("literal", [b"{999999999}", b"{999999999+}", b"~{999999999}",
                                     b"{18446744073709551616}", b"{99999999999999999999999}"])
def test_huge_literal_before_login(inst, literal):
    with Raw(inst) as r:
        r.send(b"a LOGIN " + literal + b"\r\n")
        line = r.line()
        assert line.startswith(b"a BAD"), line  # and no "+": nothing is uploaded
        if literal.endswith(b"+}"):
            # The client sends the data unasked (LITERAL+): the server cannot tell where it
            # ends, so it hangs up rather than read it as commands.
            assert r.closed()
            return
        assert r.cmd("n", "NOOP")[1].startswith(b"n OK")


@pytest.mark.parametrize("literal", [b"{999999999}", b"~{999999999}", b"{100001}"])
def test_literal_over_max_literal_after_login(inst, literal):
    """[imap] max_literal = 100000: a bigger APPEND is refused before a byte of it is sent."""
    with logged_in(inst) as r:
        r.send(b"a APPEND INBOX " + literal + b"\r\n")
        line = r.line()
        assert line.startswith(b"a BAD [TOOBIG]") or line.startswith(b"a NO [TOOBIG]"), line
        assert r.cmd("n", "NOOP")[1].startswith(b"n OK")


def test_non_synchronising_huge_literal_after_login(inst):
    """LITERAL+ sends the data without waiting: the server must refuse and not read a
    gigabyte into memory — it answers at once and either skips or hangs up."""
    with logged_in(inst) as r:
        r.send(b"a APPEND INBOX {999999999+}\r\n" + b"x" * 65536)
        line = r.line()
        assert line.startswith(b"a BAD") or line.startswith(b"* BYE"), line
    assert inst.messages(ATTACKER) == []


@pytest.mark.parametrize("logged", [False, True])
def test_overlong_line(inst, logged):
    """8 KiB before login, 64 KiB after: BAD, and the session stays in step."""
    r = logged_in(inst) if logged else Raw(inst)
    with r:
        size = 70_000 if logged else 9_000
        r.send(b"a NOOP " + b"x" * size + b"\r\n")
        assert r.line().startswith(b"a BAD")
        assert r.cmd("n", "NOOP")[1].startswith(b"n OK")


def test_endless_line_is_not_buffered(inst):
    with Raw(inst) as r:
        r.send(b"a LOGIN " + b"x" * 1024 * 1024)
        try:
            assert r.line().startswith(b"a BAD")
        except (ConnectionError, OSError):
            pass  # hung up: as good
    with Raw(inst) as r:
        assert r.cmd("n", "NOOP")[1].startswith(b"n OK")


@pytest.mark.parametrize("command", [
    b'LOGIN mallory\x00@example.test "correct horse battery"',
    b"LOGIN {21}\r\nmallory@example.test\x00 {21}\r\ncorrect horse battery",
    b'LOGIN "mallory@example.test\x00" "correct horse battery"',
    b"NOOP\x00",
    b"\x00\x00\x00",
])
def test_nul_before_login_logs_nobody_in(inst, command):
    with Raw(inst) as r:
        r.send(b"a " + command + b"\r\n")
        while True:
            line = r.line()
            if line.startswith(b"+"):
                continue
            break
        assert not line.startswith(b"a OK"), line
        _, done = r.cmd("s", "SELECT INBOX")
        assert done.startswith(b"s BAD")  # still not authenticated


@pytest.mark.parametrize("command", [
    b'SELECT "INBOX\x00"', b'CREATE "a\x00b"', b"CREATE {3+}\r\na\x00b",
    b'RENAME INBOX "x\x00y"', b'STATUS "INBOX\x00../../x" (MESSAGES)',
    b"SEARCH CHARSET UTF-8 SUBJECT {3+}\r\na\x00b",
])
def test_nul_after_login(inst, command):
    with logged_in(inst) as r:
        r.cmd("s", "SELECT INBOX") if command.startswith(b"SEARCH") else None
        _, done = r.cmd("a", command)
        if command.startswith(b"SEARCH"):
            assert done.startswith((b"a OK", b"a NO", b"a BAD"))
        else:
            assert done.startswith((b"a NO", b"a BAD")), done
        assert r.cmd("n", "NOOP")[1].startswith(b"n OK")


# --- slowloris ---


@pytest.mark.parametrize("port", ["imap", "imaps", "starttls"])
def test_slowloris_before_login_is_closed(inst, port):
    """[imap] login_timeout = 2 is how long a connection may take to log in, not how long it
    may stay silent: trickling a byte every half second does not keep it open. Over TLS the
    server's goodbye (close_notify) is not answered: it hangs up anyway."""
    sock = socket.create_connection(("127.0.0.1", inst.ports["imaps" if port == "imaps"
                                                             else "imap"]), timeout=10)
    started = time.monotonic()
    try:
        if port == "imaps":
            sock = inst.tls_context().wrap_socket(sock, server_hostname="localhost")
        sock.recv(4096)  # the greeting
        if port == "starttls":
            sock.sendall(b"s STARTTLS\r\n")
            assert sock.recv(4096).startswith(b"s OK")
            sock = inst.tls_context().wrap_socket(sock, server_hostname="localhost")
        with pytest.raises(OSError):
            for byte in b"a NOOP\r\n" * 20:  # NOOP is allowed before login
                sock.sendall(bytes([byte]))
                time.sleep(0.5)
                if time.monotonic() - started > 8:
                    break
            else:
                pytest.fail("still open after 80 bytes")
            # Seen closed through the next send or an empty read.
            sock.settimeout(2)
            while sock.recv(4096):
                pass
            raise ConnectionResetError
        assert time.monotonic() - started < 6
    finally:
        sock.close()


def test_silent_logged_in_session_is_not_cut_by_login_timeout(inst):
    with logged_in(inst) as r:
        time.sleep(2.5)
        assert r.cmd("n", "NOOP")[1].startswith(b"n OK")


# --- mailbox names that try to leave the Maildir ---


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its type and, for files, size and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (path.is_dir(), st.st_size if path.is_file()
                                               else 0, st.st_mtime_ns if path.is_file() else 0)
    return out


VOLATILE = ("mailstead-index.sqlite3", "accounts.sqlite3", ".sqlite3-wal", ".sqlite3-shm",
            "mailstead.log", "admin-sessions")

ESCAPES = [
    "../../x", "../../../escaped", "..", ".", "./x", "a/../../x", "INBOX/../../etc",
    "INBOX/../../../alice/INBOX", "INBOX/..", "INBOX/.", "a/./b", "a//b", "/etc/passwd",
    "/tmp/escaped", "//x", "\\..\\..\\x", "..\\x", "~alice", "~alice/INBOX",
    "../alice@example.test/INBOX", "../alice", "../../example.test/alice",
    "#shared/alice", "Other Users/alice",
    "&AC4ALg-/x",  # ".." in modified UTF-7: not the canonical spelling, refused
    "&AC8-etc",  # "/" in modified UTF-7
    "&AAA-x",  # NUL in modified UTF-7
    "x&AC4-",  # "." in modified UTF-7
    "&,w7,Dg-",  # two fullwidth full stops: a name, not a path
    "x" * 300,
]


def _run_all(r: Raw, name: str) -> list[bytes]:
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    done = []
    for i, command in enumerate([f"CREATE {quoted}", f"SELECT {quoted}", f"EXAMINE {quoted}",
                                 f"STATUS {quoted} (MESSAGES)", f"DELETE {quoted}",
                                 f"RENAME INBOX {quoted}", f"RENAME Archive {quoted}",
                                 f"RENAME {quoted} Stolen", f"SUBSCRIBE {quoted}",
                                 f'APPEND {quoted} {{7+}}\r\nx: y\r\n\r\n',
                                 f'LIST "" {quoted}', f"GETQUOTAROOT {quoted}"]):
        _, line = r.cmd(f"t{i}", command.encode())
        done.append(line)
    r.cmd("s", "SELECT INBOX")
    for i, command in enumerate([f"COPY 1:* {quoted}", f"MOVE 1:* {quoted}"]):
        _, line = r.cmd(f"m{i}", command.encode())
        done.append(line)
    r.cmd("u", "UNSELECT")
    return done


def test_mailbox_names_never_leave_the_maildir(inst):
    inst.send(ATTACKER, b"From: bob@remote.test\r\nSubject: bait\r\n\r\nx\r\n")
    mail = inst.data_dir / "mail" / "example.test"
    mine, theirs = mail / "mallory", mail / "alice"
    before_all = {k: v for k, v in tree(inst.root).items()
                  if not k.startswith(str(mine.relative_to(inst.root)))}
    before_theirs = tree(theirs)
    before_mine = set(tree(mine))
    outcomes = {}
    with logged_in(inst) as r:
        for name in ESCAPES:
            outcomes[name] = _run_all(r, name)
            lines, _ = r.cmd("l", 'LIST "" "*"')
            assert all(b'"/"' in line for line in lines)
    # The victim's Maildir is exactly as it was, file by file.
    assert tree(theirs) == before_theirs
    # Nothing new anywhere outside the attacker's Maildir (bar databases and logs).
    after_all = {k: v for k, v in tree(inst.root).items()
                 if not k.startswith(str(mine.relative_to(inst.root)))}
    changed = {k for k in before_all.keys() | after_all.keys()
               if before_all.get(k) != after_all.get(k) and not k.endswith(VOLATILE)}
    assert changed == set()
    for absolute in ("/tmp/escaped", "/etc/passwd/x", str(mail / "x"), str(inst.root / "x"),
                     str(inst.data_dir / "escaped")):
        assert not Path(absolute + ".").exists() and not Path(absolute).exists() or \
            absolute == "/etc/passwd/x"
    # Inside it: whatever was made is one Maildir++ folder directory at the top, named
    # ".<something>" with no path separator and no dot-dot.
    for path in set(tree(mine)) - before_mine:
        top = path.split(os.sep)[0]
        if top == "subscriptions" or top.startswith("mailstead-"):
            # SUBSCRIBE's list of names; the index database and its WAL files, and INBOX's
            # uidlist and UIDVALIDITY counter when this test is the first to open INBOX.
            continue
        assert top.startswith(".") and ".." not in top and top not in (".", ".."), path
    # The attacker's own INBOX still has its message; the victim's is unread by anyone.
    with Raw(inst) as r:
        r.login(VICTIM)
        lines, _ = r.cmd("s", "EXAMINE INBOX")
        assert b"* 1 EXISTS" in lines
        lines, _ = r.cmd("f", "FETCH 1 FLAGS")
        assert lines == [b"* 1 FETCH (FLAGS ())"]


def test_another_users_mailbox_is_not_reachable_by_name(inst):
    with logged_in(inst) as r:
        for name in (VICTIM, f"{VICTIM}/INBOX", "alice", "alice/INBOX", "~alice/INBOX",
                     "../alice", "#users/alice"):
            quoted = '"' + name + '"'
            lines, done = r.cmd("s", f"SELECT {quoted}")
            # Refused, or (say "~alice/INBOX") a folder of the attacker's own, empty.
            assert done.startswith((b"s NO", b"s BAD")) or b"* 0 EXISTS" in lines, (name, done)
            lines, done = r.cmd("t", f"STATUS {quoted} (MESSAGES)")
            assert done.startswith((b"t NO", b"t BAD")) or b"MESSAGES 0" in lines[0], name
        lines, _ = r.cmd("l", 'LIST "" "*"')
        # Only the attacker's own folders, whatever they were named after.
        mine = inst.data_dir / "mail" / "example.test" / "mallory"
        for line in lines:
            name = mutf7.decode(line.rsplit(b' "/" ', 1)[1].strip(b'"').decode())
            folder = "INBOX" if name == "INBOX" else "." + name.replace("/", ".")
            assert name == "INBOX" or (mine / folder).is_dir(), line
        lines, _ = r.cmd("n", "NAMESPACE")
        assert lines == [b'* NAMESPACE (("" "/")) NIL NIL']


def test_modified_utf7_round_trip_of_dot_names():
    """The spellings above mean what the test says they mean."""
    assert mutf7.encode("..") == ".."  # so "&AC4ALg-" is a non-canonical spelling
    with pytest.raises(ValueError):
        mutf7.decode("&AC4ALg-")
    with pytest.raises(ValueError):
        mutf7.decode("&AC8-etc")
