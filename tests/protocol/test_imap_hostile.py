"""IMAP under stress and in odd situations: limits before and after login, timeouts, folders
vanishing under a session, stale flags, files written by other programs."""

from __future__ import annotations

import os
import time

import pytest

from tests.support.imap import Raw, deliver


@pytest.fixture
def user(mx, request):
    address = f"h{abs(hash(request.node.name)) % 10**8}@example.test"
    mx.add_user(address)
    return address


def selected(mx, user, folder="INBOX") -> Raw:
    r = Raw(mx)
    r.login(user)
    r.cmd("s", f"SELECT {folder}")
    return r


def test_big_literals_refused_before_login(mx):
    with Raw(mx) as r:
        r.send("a LOGIN {60000000}\r\n")
        line = r.line()
        assert line.startswith(b"a BAD [TOOBIG]"), line  # no "+": nothing is uploaded
        r.send("b APPEND INBOX {60000000+}\r\n")
        assert r.line().startswith(b"b BAD [TOOBIG]")


def test_literals_after_login_may_be_big(mx, user):
    msg = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 200
    with Raw(mx) as r:
        r.login(user)
        _, done = r.cmd("a", b"APPEND INBOX {%d+}\r\n" % len(msg) + msg)
        assert done.startswith(b"a OK [APPENDUID")


def test_login_timeout_and_per_ip_limit(fresh):
    fresh.append_config("[imap]\nlogin_timeout = 1\n"
                        "[abuse]\nallow = []\nmax_connections_per_ip = 2")
    fresh.start()
    with Raw(fresh) as a, Raw(fresh) as b:
        with pytest.raises(ConnectionError), Raw(fresh) as c:
            assert c.greeting.startswith(b"* BYE Too many connections")
            c.line()
        time.sleep(1.5)
        assert a.line().startswith(b"* BYE Autologout") and a.closed()
        assert b.line().startswith(b"* BYE Autologout")


def test_idle_timeout_logs_out(fresh):
    fresh.add_user("sleepy@example.test")
    fresh.append_config("[imap]\nidle_timeout = 1")
    fresh.start()
    with Raw(fresh) as r:
        r.login("sleepy@example.test")
        assert r.line().startswith(b"* BYE Autologout") and r.closed()
    with Raw(fresh) as r:  # the clock starts again at each command: a chatty client stays
        r.login("sleepy@example.test")
        for tag in "abcd":
            time.sleep(0.6)
            assert r.cmd(tag, "NOOP")[1].startswith(tag.encode() + b" OK")
        assert r.line().startswith(b"* BYE Autologout") and r.closed()


def test_session_limit_per_user(fresh):
    fresh.add_user("busy@example.test")
    fresh.append_config("[imap]\nmax_connections_per_user = 2")
    fresh.start()
    with Raw(fresh) as a, Raw(fresh) as b, Raw(fresh) as c:
        a.login("busy@example.test")
        b.login("busy@example.test")
        _, done = c.cmd("x", 'LOGIN busy@example.test "correct horse battery"')
        assert done.startswith(b"x NO [LIMIT]")


def test_selected_mailbox_deleted_by_another_session(mx, user):
    with Raw(mx) as a:
        a.login(user)
        a.cmd("c", "CREATE Proj")
        a.cmd("p", b'APPEND Proj {18+}\r\nSubject: old\r\n\r\nx\r\n')
        with selected(mx, user, "Proj") as b:
            a.cmd("d", "DELETE Proj")
            a.cmd("e", "CREATE Proj")
            a.cmd("f", b'APPEND Proj {18+}\r\nSubject: new\r\n\r\ny\r\n')
            b.send("n NOOP\r\n")
            assert b.line().startswith(b"* BYE Selected mailbox was deleted")
            assert b.closed()  # never the new folder's mail under the old UIDs


def test_selected_mailbox_renamed_under_an_idle_session(mx, user):
    with Raw(mx) as a:
        a.login(user)
        a.cmd("c", "CREATE Old")
        with selected(mx, user, "Old") as b:
            b.send("i IDLE\r\n")
            assert b.line() == b"+ idling"
            a.cmd("r", "RENAME Old New")
            assert b.line().startswith(b"* BYE") and b.closed()


def test_expunge_uses_the_flags_of_now(mx, user):
    deliver(mx, user, "keep me")
    with selected(mx, user) as a, selected(mx, user) as b:
        b.cmd("1", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        a.cmd("2", "NOOP")  # a now believes message 1 is \Deleted
        b.cmd("3", "STORE 1 -FLAGS.SILENT (\\Deleted)")
        lines, _ = a.cmd("4", "EXPUNGE")
        assert not any(b"EXPUNGE" in x for x in lines)
        assert b.cmd("5", "SEARCH ALL")[0] == [b"* SEARCH 1"]


def test_lf_only_files_are_served_as_crlf(mx, user):
    maildir = mx.data_dir / "mail" / "example.test" / user.split("@")[0]
    text = b"From: mutt@example.test\nSubject: written by mutt\n\nline one\nline two\n"
    size, vsize = len(text), len(text.replace(b"\n", b"\r\n"))
    (maildir / "cur" / f"1700000000.M1P1.other,S={size},W={vsize}:2,S").write_bytes(text)
    with selected(mx, user) as r:
        lines, _ = r.cmd("f", "FETCH 1 (RFC822.SIZE BODY.PEEK[])")
        assert lines[0].startswith(f"* 1 FETCH (RFC822.SIZE {vsize} BODY[] {{{vsize}}}".encode())
        assert text.replace(b"\n", b"\r\n") in lines[0]


def test_rename_refusals_change_nothing(mx, user):
    with Raw(mx) as r:
        r.login(user)
        r.cmd("a", "CREATE top/child")
        _, done = r.cmd("b", "RENAME top top/sub/deeper")
        assert done.startswith(b"b NO [CANNOT]")
        _, done = r.cmd("c", f"RENAME top {'x' * 250}")  # top/child would be too long
        assert done.startswith(b"c NO [CANNOT]")
        lines, _ = r.cmd("d", 'LIST "" "top*"')
        assert [line.rsplit(b" ", 1)[1] for line in lines] == [b"top", b"top/child"]


def test_store_reports_unchanged_messages_too(mx, user):
    deliver(mx, user, "flag me")
    with selected(mx, user) as r:
        r.cmd("a", "STORE 1 +FLAGS.SILENT (\\Flagged)")
        lines, _ = r.cmd("b", "STORE 1 +FLAGS (\\Flagged)")
        assert lines == [b"* 1 FETCH (FLAGS (\\Flagged))"]


def test_examine_never_sets_seen(mx, user):
    deliver(mx, user, "read only")
    with Raw(mx) as r:
        r.login(user)
        r.cmd("e", "EXAMINE INBOX")
        lines, _ = r.cmd("f", "FETCH 1 (BODY[] FLAGS)")
        assert lines[0].endswith(b"FLAGS ())")
        r.cmd("s", "SELECT INBOX")
        assert r.cmd("g", "FETCH 1 FLAGS")[0] == [b"* 1 FETCH (FLAGS ())"]


def test_nul_bytes_never_reach_the_client(mx, user):
    with Raw(mx) as r:
        r.login(user)
        msg = b"Subject: nul\r\n\r\nbefore\x00after\r\n"
        r.cmd("a", b"APPEND INBOX ~{%d+}\r\n" % len(msg) + msg)
        r.cmd("s", "SELECT INBOX")
        for item in ("RFC822", "BODY[]", "RFC822.TEXT"):
            lines, _ = r.cmd("f", f"FETCH 1 {item}")
            assert b"\x00" not in lines[0] and b"before" in lines[0], item


def test_names_and_special_use_odd_cases(mx, user):
    with Raw(mx) as r:
        r.login(user)
        _, done = r.cmd("a", 'SELECT "\xc4\xb1nbox"'.encode("latin-1"))
        assert done.startswith(b"a NO") or done.startswith(b"a BAD")  # "ınbox" is not INBOX
        _, done = r.cmd("b", "CREATE Bin (USE (\\Trash))")
        assert done.startswith(b"b NO [USEATTR]")
        assert r.cmd("c", "CREATE x")[1].startswith(b"c OK")
        name = "x\u2028y"
        assert r.cmd("d", f'CREATE "{name}"'.encode())[1].startswith(b"d OK")
        assert r.cmd("e", f'SUBSCRIBE "{name}"'.encode())[1].startswith(b"e OK")
        lines, _ = r.cmd("f", 'LSUB "" "*"')
        assert len(lines) == 1
        assert r.cmd("g", f'UNSUBSCRIBE "{name}"'.encode())[1].startswith(b"g OK")


def test_copy_over_quota(fresh):
    fresh.add_user("small@example.test", quota_bytes=3000)
    fresh.start()
    deliver(fresh, "small@example.test", "fill", ("x" * 98 + "\r\n") * 15)
    with selected(fresh, "small@example.test") as r:
        _, done = r.cmd("c", "COPY 1 Archive")
        assert done.startswith(b"c NO [OVERQUOTA]")


def test_message_removed_by_another_program_during_search(mx, user):
    deliver(mx, user, "vanishing")
    maildir = mx.data_dir / "mail" / "example.test" / user.split("@")[0]
    with selected(mx, user) as r:
        for sub in ("cur", "new"):
            for path in (maildir / sub).iterdir():
                os.unlink(path)
        _, done = r.cmd("s", "SEARCH BODY vanish")
        assert done.startswith(b"s OK")


def test_failed_logins_are_slowed(fresh):
    fresh.add_user("guess@example.test")
    text = fresh.config_path.read_text().replace("[accounts]\n",
                                                 "[accounts]\nauth_failure_delay = 0.4\n", 1)
    fresh.config_path.write_text(text)
    fresh.start()
    with Raw(fresh) as r:
        timings = []
        for i in range(4):
            started = time.monotonic()
            _, done = r.cmd(f"a{i}", 'LOGIN guess@example.test "wrong guess"')
            timings.append(time.monotonic() - started)
            assert done.startswith(f"a{i} NO [AUTHENTICATIONFAILED]".encode())
        # Two free failures, then 0.4 s and 0.8 s — before the password is even checked.
        assert max(timings[:2]) < 0.35 and timings[2] >= 0.35 and timings[3] >= 0.75
