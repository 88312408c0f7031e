"""LIST, LSUB, CREATE, DELETE, RENAME, SUBSCRIBE, STATUS, SELECT/EXAMINE (RFC 3501 §6.3,
RFC 5258, RFC 6154, RFC 5819)."""

from __future__ import annotations

import pytest

from tests.support.imap import Raw, deliver


@pytest.fixture
def user(mx, request):
    address = f"mb{abs(hash(request.node.name)) % 10**8}@example.test"
    mx.add_user(address)
    return address


def session(mx, user):
    r = Raw(mx)
    r.login(user)
    return r


def test_default_folders_with_special_use(mx, user):
    with session(mx, user) as r:
        lines, done = r.cmd("a", 'LIST "" "*"')
        assert done.startswith(b"a OK")
        assert lines == [
            b'* LIST (\\HasNoChildren) "/" INBOX',
            b'* LIST (\\HasNoChildren \\Archive) "/" Archive',
            b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts',
            b'* LIST (\\HasNoChildren \\Junk) "/" Junk',
            b'* LIST (\\HasNoChildren \\Sent) "/" Sent',
            b'* LIST (\\HasNoChildren \\Trash) "/" Trash',
        ]
        lines, _ = r.cmd("b", 'LIST "" ""')
        assert lines == [b'* LIST (\\Noselect) "/" ""']
        lines, _ = r.cmd("c", 'LIST (SPECIAL-USE) "" "*"')
        assert len(lines) == 5 and all(b"\\HasNoChildren \\" in line for line in lines)
        lines, _ = r.cmd("d", 'LIST "" "inbox"')
        assert lines == [b'* LIST (\\HasNoChildren) "/" INBOX']


def test_create_hierarchy_rename_delete(mx, user):
    with session(mx, user) as r:
        assert r.cmd("a", "CREATE Projects/2026/Q4")[1].startswith(b"a OK")
        lines, _ = r.cmd("b", 'LIST "" "Projects*"')
        assert lines == [b'* LIST (\\HasChildren) "/" Projects',
                         b'* LIST (\\HasChildren) "/" Projects/2026',
                         b'* LIST (\\HasNoChildren) "/" Projects/2026/Q4']
        lines, _ = r.cmd("c", 'LIST "" "Projects/%"')
        assert lines == [b'* LIST (\\HasChildren) "/" Projects/2026']
        _, done = r.cmd("d", "CREATE Projects")
        assert done.startswith(b"d NO [ALREADYEXISTS]")
        assert r.cmd("e", "RENAME Projects Work")[1].startswith(b"e OK")
        lines, _ = r.cmd("f", 'LIST "" "Work*"')
        assert [line.rsplit(b" ", 1)[1] for line in lines] == [b"Work", b"Work/2026",
                                                               b"Work/2026/Q4"]
        _, done = r.cmd("g", "DELETE Work")
        assert done.startswith(b"g NO [INUSE]")
        for name in ("Work/2026/Q4", "Work/2026", "Work"):
            assert r.cmd("h", f"DELETE {name}")[1].startswith(b"h OK")
        assert r.cmd("i", 'LIST "" "Work*"')[0] == []
        assert r.cmd("j", "DELETE INBOX")[1].startswith(b"j NO")
        assert r.cmd("k", "DELETE Nope")[1].startswith(b"k NO [NONEXISTENT]")


@pytest.mark.parametrize("name", ["../evil", "a.b", "/etc/passwd", "..", "x/../y", ".hidden"])
def test_names_that_would_escape_are_refused(mx, user, name):
    with session(mx, user) as r:
        _, done = r.cmd("a", f'CREATE "{name}"')
        assert done.startswith(b"a NO") or done.startswith(b"a BAD")
    maildir = mx.data_dir / "mail" / "example.test" / user.split("@")[0]
    assert sorted(p.name for p in maildir.iterdir() if p.name.startswith(".")) == [
        ".Archive", ".Drafts", ".Junk", ".Sent", ".Trash"]


def test_international_names_in_modified_utf7(mx, user):
    with session(mx, user) as r:
        assert r.cmd("a", 'CREATE "&AMQ-rger"')[1].startswith(b"a OK")  # "Ärger"
        lines, _ = r.cmd("b", 'LIST "" "&AMQ-*"')
        assert lines == [b'* LIST (\\HasNoChildren) "/" &AMQ-rger']
    maildir = mx.data_dir / "mail" / "example.test" / user.split("@")[0]
    assert (maildir / ".Ärger").is_dir()


def test_subscriptions_and_lsub(mx, user):
    with session(mx, user) as r:
        r.cmd("a", "CREATE News")
        assert r.cmd("b", "SUBSCRIBE News")[1].startswith(b"b OK")
        assert r.cmd("c", "SUBSCRIBE INBOX")[1].startswith(b"c OK")
        lines, _ = r.cmd("d", 'LSUB "" "*"')
        assert sorted(lines) == [b'* LSUB () "/" INBOX', b'* LSUB () "/" News']
        lines, _ = r.cmd("e", 'LIST (SUBSCRIBED) "" "*"')
        assert len(lines) == 2 and all(b"\\Subscribed" in line for line in lines)
        assert r.cmd("f", "UNSUBSCRIBE News")[1].startswith(b"f OK")
        assert r.cmd("g", "UNSUBSCRIBE News")[1].startswith(b"g NO")
        assert r.cmd("h", 'LSUB "" "*"')[0] == [b'* LSUB () "/" INBOX']


def test_status_and_list_status(mx, user):
    deliver(mx, user, "one")
    deliver(mx, user, "two")
    with session(mx, user) as r:
        lines, _ = r.cmd("a", "STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY SIZE "
                              "HIGHESTMODSEQ RECENT)")
        assert lines[0].startswith(b"* STATUS INBOX (MESSAGES 2 UNSEEN 2 UIDNEXT 3 UIDVALIDITY ")
        assert b" SIZE " in lines[0] and b" HIGHESTMODSEQ " in lines[0]
        lines, _ = r.cmd("b", 'LIST "" "INBOX" RETURN (STATUS (MESSAGES UNSEEN))')
        assert lines == [b'* LIST (\\HasNoChildren) "/" INBOX',
                         b"* STATUS INBOX (MESSAGES 2 UNSEEN 2)"]
        assert r.cmd("c", "STATUS Nope (MESSAGES)")[1].startswith(b"c NO [NONEXISTENT]")


def test_select_and_examine(mx, user):
    deliver(mx, user, "hello")
    with session(mx, user) as r:
        lines, done = r.cmd("a", "SELECT INBOX (CONDSTORE)")
        text = b"\n".join(lines)
        assert done.startswith(b"a OK [READ-WRITE]")
        for needle in (b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft",
                       b"* OK [PERMANENTFLAGS (", b"\\*)]", b"* 1 EXISTS", b"* 0 RECENT",
                       b"* OK [UNSEEN 1]", b"* OK [UIDVALIDITY ", b"* OK [UIDNEXT 2]",
                       b"* OK [HIGHESTMODSEQ "):
            assert needle in text, needle
        lines, done = r.cmd("b", "EXAMINE INBOX")
        assert done.startswith(b"b OK [READ-ONLY]")
        _, done = r.cmd("c", "STORE 1 +FLAGS (\\Seen)")
        assert done.startswith(b"c NO [READ-ONLY]")
        _, done = r.cmd("d", "SELECT Nope")
        assert done.startswith(b"d NO [NONEXISTENT]")
        _, done = r.cmd("e", "FETCH 1 FLAGS")  # a failed SELECT leaves nothing selected
        assert done.startswith(b"e BAD")


def test_quota(fresh):
    fresh.add_user("q@example.test", quota_bytes=10 * 1024)
    fresh.add_user("free@example.test")
    fresh.start()
    deliver(fresh, "q@example.test", "fill", ("x" * 98 + "\r\n") * 30)
    with session(fresh, "q@example.test") as r:
        lines, _ = r.cmd("a", "GETQUOTAROOT INBOX")
        assert lines[0] == b'* QUOTAROOT INBOX ""'
        assert lines[1].startswith(b'* QUOTA "" (STORAGE 3 10)')
        lines, _ = r.cmd("b", 'GETQUOTA ""')
        assert lines[0].startswith(b'* QUOTA "" (STORAGE ')
        big = b"Subject: big\r\n\r\n" + (b"y" * 98 + b"\r\n") * 100
        _, done = r.cmd("c", b"APPEND Sent {%d+}\r\n" % len(big) + big)
        assert done.startswith(b"c NO [OVERQUOTA]")
    with session(fresh, "free@example.test") as r:
        lines, _ = r.cmd("a", 'GETQUOTA ""')
        assert lines == [b'* QUOTA "" ()']


def test_lsub_shows_the_parent_of_a_subscribed_child(mx, user):
    with session(mx, user) as r:
        r.cmd("a", "CREATE Par/Child")
        r.cmd("b", "SUBSCRIBE Par/Child")
        lines, _ = r.cmd("c", 'LSUB "" "%"')
        assert lines == [b'* LSUB (\\Noselect) "/" Par']
        lines, _ = r.cmd("d", 'LSUB "" "*"')
        assert lines == [b'* LSUB () "/" Par/Child']
