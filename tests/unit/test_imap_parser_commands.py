"""server.imap.parser: commands outside FETCH/STORE/SEARCH, with lines real clients send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from server.imap.parser import (
    Append,
    AppendMessage,
    Authenticate,
    Command,
    CommandReader,
    Create,
    Enable,
    Id,
    List,
    Login,
    Mailbox,
    NeedLiteral,
    QResync,
    Rename,
    Select,
    Status,
    parse_sequence_set,
)
from tests.support.imapparse import error, parse

# --- no arguments ---


@pytest.mark.parametrize("name", ["CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE",
                                  "UNSELECT", "EXPUNGE", "IDLE", "NAMESPACE"])
def test_commands_without_arguments(name):
    assert parse(b"1.1 " + name.encode()) == Command("1.1", name, False, None)
    assert parse(b"a " + name.lower().encode()).name == name  # Thunderbird writes lower case
    assert error(b"a " + name.encode() + b" x").message == (
        f"{name}: unexpected ' x' after the arguments; it takes none")


def test_tags():
    assert parse(b"A0001 NOOP").tag == "A0001"
    assert parse(b"]weird.tag-1 NOOP").tag == "]weird.tag-1"  # "]" is allowed in a tag
    for bad in (b"a+1 NOOP", b"a* NOOP", b"(a NOOP", b"NOOP", b" a NOOP", b"a\tNOOP"):
        err = error(bad)
        assert err.tag is None, bad


def test_unknown_command_and_uid_forms():
    err = error(b'a SETQUOTA "" (STORAGE 1)')
    assert (err.tag, err.message) == ("a", "unknown command SETQUOTA")
    assert error(b"a UID SELECT INBOX").message.startswith("UID SELECT: only COPY FETCH MOVE")
    assert error(b"a  NOOP").message == "expected a command name, found ' NOOP'"


# --- LOGIN, AUTHENTICATE, ENABLE, ID ---


def test_login():
    assert parse(b"a1 LOGIN alice s3cret").args == Login("alice", "s3cret")
    # imaplib quotes what needs it; Thunderbird sends a literal for odd passwords.
    assert parse(b'JBKE1 LOGIN "alice@example.org" "p a\\"ss\\\\"').args == Login(
        "alice@example.org", 'p a"ss\\')
    assert parse(b"a LOGIN {5}\r\nalice {9}\r\np\xc3\xa4ssw\xc3\xb6r").args == Login(
        "alice", "pässwör")
    assert "password" not in repr(parse(b"a LOGIN bob hunter2").args).replace("password=", "")
    assert "hunter2" not in repr(parse(b"a LOGIN bob hunter2").args)


@pytest.mark.parametrize(("line", "message"), [
    (b"a LOGIN alice", "LOGIN: expected a space before the password, found end of line"),
    (b'a LOGIN "alice pw', "LOGIN: quoted string not terminated"),
    (b'a LOGIN "a\\lice" pw', 'LOGIN: quoted string: only \\\\ and \\" may be escaped'),
    (b"a LOGIN alice \xff", "LOGIN: expected a password, found '\\xff'"),
    (b'a LOGIN alice "\xff"', "LOGIN: password is not valid UTF-8"),
])
def test_login_errors(line, message):
    assert error(line).message == message


def test_authenticate():
    assert parse(b"a AUTHENTICATE PLAIN").args == Authenticate("PLAIN", None)
    # RFC 4959 SASL-IR, as mbsync and Thunderbird send it.
    assert parse(b"a authenticate plain AGFsaWNlAHNlY3JldA==").args == Authenticate(
        "PLAIN", b"\x00alice\x00secret")
    assert parse(b"a AUTHENTICATE EXTERNAL =").args == Authenticate("EXTERNAL", b"")
    assert parse(b"a AUTHENTICATE XOAUTH2 dXNlcj1h").args.initial == b"user=a"
    assert error(b"a AUTHENTICATE PLAIN AGFsaWNl!").message.startswith("AUTHENTICATE: unexpec")
    assert "not valid base64" in error(b"a AUTHENTICATE PLAIN AGFsaWNlA").message
    assert "<" in repr(parse(b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==").args)


def test_enable():
    assert parse(b"a ENABLE QRESYNC CONDSTORE utf8=accept").args == Enable(
        ("QRESYNC", "CONDSTORE", "UTF8=ACCEPT"))
    assert error(b"a ENABLE").message.startswith("ENABLE: expected a space")


def test_id():
    # Apple Mail's ID.
    line = (b'4 ID ("name" "Mac OS X Mail" "version" "16.0 (3774.600.62)" "os" "Mac OS X" '
            b'"os-version" "13.5 (22G74)" "vendor" "Apple Inc.")')
    assert parse(line).args == Id({"name": "Mac OS X Mail", "version": "16.0 (3774.600.62)",
                                   "os": "Mac OS X", "os-version": "13.5 (22G74)",
                                   "vendor": "Apple Inc."})
    assert parse(b"a ID NIL").args == Id(None)
    assert parse(b'a ID ("name" NIL)').args == Id({"name": None})
    assert parse(b"a ID ()").args == Id({})
    assert hash(parse(b'a ID ("x" "y")').args) == hash(Id({"x": "y"}))
    too_many = b"a ID (" + b" ".join(b'"k%d" "v"' % i for i in range(31)) + b")"
    assert "at most 30" in error(too_many).message
    assert "RFC 2971" in error(b'a ID ("' + b"k" * 31 + b'" "v")').message
    assert error(b'a ID ("name")').message == (
        "ID: expected a space before the ID field value, found ')'")


# --- SELECT, EXAMINE (CONDSTORE, QRESYNC) ---


def test_select():
    assert parse(b'3 select "INBOX"').args == Select("INBOX")
    assert parse(b"a SELECT inbox").args == Select("INBOX")
    assert parse(b"a EXAMINE Archive").name == "EXAMINE"
    assert parse(b"a SELECT INBOX (CONDSTORE)").args == Select("INBOX", condstore=True)


def test_select_qresync():
    # RFC 7162 §3.2.5.2's examples.
    assert parse(b"A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 "
                 b"41,43:211,214:541))").args.qresync == QResync(
        67890007, 20050715194045000, parse_sequence_set("41,43:211,214:541"))
    q = parse(b"B04 SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541 "
              b"(1:15,20 41:55,58)))").args.qresync
    assert q.known_uids == parse_sequence_set("41:211,214:541")
    assert q.seq_match == (parse_sequence_set("1:15,20"), parse_sequence_set("41:55,58"))
    plain = parse(b"a SELECT INBOX (QRESYNC (1 2) CONDSTORE)").args
    assert plain == Select("INBOX", True, QResync(1, 2))
    assert parse(b"a SELECT INBOX (QRESYNC (1 2 (1 5)))").args.qresync.seq_match is not None


@pytest.mark.parametrize(("line", "message"), [
    (b"a SELECT", "SELECT: expected a space before the mailbox name, found end of line"),
    (b"a SELECT INBOX ()", "SELECT: the SELECT parameters must not be empty"),
    (b"a SELECT INBOX (FOO)", "SELECT: unknown parameter FOO (CONDSTORE, QRESYNC)"),
    (b"a SELECT INBOX (CONDSTORE CONDSTORE)", "SELECT: CONDSTORE given twice"),
    (b"a SELECT INBOX (QRESYNC (0 5))", "SELECT: UIDVALIDITY must not be 0"),
    (b"a SELECT INBOX (QRESYNC (1 5 1:*))",
     "SELECT: '*' is not allowed in known UIDs (RFC 7162 §3.2.5)"),
    (b"a SELECT INBOX (QRESYNC (1 99999999999999999999))",
     "SELECT: mod-sequence 99999999999999999999 is too large (at most 9223372036854775807)"),
    (b"a SELECT INBOX (QRESYNC (1 5)",
     "SELECT: expected a space or ')' in the SELECT parameters, found end of line"),
])
def test_select_errors(line, message):
    assert error(line).message == message


# --- mailbox names ---


def test_mailbox_names():
    assert parse(b"a SELECT Inbox").args.mailbox == "INBOX"
    assert parse(b'a SELECT "iNbOx"').args.mailbox == "INBOX"
    assert parse(b"a SELECT INBOX/Sub").args.mailbox == "INBOX/Sub"
    assert parse(b"a SELECT ~peter/mail/&U,BTFw-/&ZeVnLIqe-").args.mailbox == (
        "~peter/mail/台北/日本語")
    # IMAP4rev2 (RFC 9051 §5.1): raw UTF-8 in a quoted string or literal.
    assert parse('a SELECT "Entwürfe"'.encode()).args.mailbox == "Entwürfe"
    assert parse(b"a SELECT {9}\r\nEntw\xc3\xbcrfe").args.mailbox == "Entwürfe"
    assert parse(b'a SELECT "Tom &- Jerry"').args.mailbox == "Tom & Jerry"
    assert parse(b"a SELECT a]b").args.mailbox == "a]b"  # "]" is an ASTRING-CHAR


@pytest.mark.parametrize(("line", "message"), [
    (b"a SELECT &Jjo", "SELECT: invalid mailbox name encoding: '&' shift not closed by '-'"),
    (b"a SELECT &AGE-", "SELECT: invalid mailbox name encoding: base64 shift &AGE- encodes "
                        "printable US-ASCII"),
    (b'a SELECT "caf\xe9"', "SELECT: invalid mailbox name encoding: 'utf-8' codec can't "
                            "decode byte 0xe9 in position 3: unexpected end of data"),
    (b"a SELECT &AAk-", "SELECT: mailbox name contains a control character"),
    (b"a SELECT {3}\r\na\x01b",
     "SELECT: invalid mailbox name encoding: character '\\x01' must be base64-encoded"),
    (b"a SELECT {4}\r\n\xc3\xa4\x01b", "SELECT: mailbox name contains a control character"),
    (b"a SELECT foo%", "SELECT: unexpected '%' after the arguments"),
])
def test_mailbox_name_errors(line, message):
    assert error(line).message == message


# --- CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE ---


def test_create():
    assert parse(b'a CREATE "Lists/python"').args == Create("Lists/python")
    assert parse(b"a CREATE Drafts2 (USE (\\drafts \\X-Custom))").args == Create(
        "Drafts2", ("\\Drafts", "\\X-Custom"))
    assert error(b"a CREATE x (FOO (1))").message == "CREATE: unknown CREATE parameter FOO (USE)"
    assert error(b"a CREATE x (USE (Sent))").message.startswith(
        "CREATE: expected a special-use attribute")


@pytest.mark.parametrize("name", ["DELETE", "SUBSCRIBE", "UNSUBSCRIBE"])
def test_one_mailbox_commands(name):
    assert parse(f'a {name} "Old Stuff"'.encode()) == Command("a", name, False,
                                                             Mailbox("Old Stuff"))


def test_rename():
    assert parse(b'a RENAME "Old" "New/&AOQ-"').args == Rename("Old", "New/ä")
    assert error(b"a RENAME Old").message == (
        "RENAME: expected a space before the new mailbox name, found end of line")


# --- LIST, LSUB, STATUS ---


def test_list_basic():
    assert parse(b'a LIST "" *').args == List("", ("*",))
    assert parse(b'a LIST "" %').args == List("", ("%",))
    assert parse(b'a LIST "" ""').args == List("", ("",))  # the hierarchy delimiter query
    assert parse(b"a LIST ~/Mail/ %/&ZeVnLIqe-*").args == List("~/Mail/", ("%/日本語*",))
    assert parse(b'a LIST "" inbox').args.patterns == ("INBOX",)
    assert parse(b'a LSUB "" "*"') == Command("a", "LSUB", False, List("", ("*",)))


def test_list_extended():
    # Thunderbird, Apple Mail and RFC 5258 §5 examples.
    assert parse(b'5 list (SPECIAL-USE) "" "*"').args == List("", ("*",), ("SPECIAL-USE",))
    assert parse(b'a LIST "" "*" RETURN (SPECIAL-USE SUBSCRIBED)').args == List(
        "", ("*",), returns=("SPECIAL-USE", "SUBSCRIBED"))
    assert parse(b'A02 LIST (subscribed) "" "*"').args.selection == ("SUBSCRIBED",)
    assert parse(b'A03 LIST () "" "%" RETURN (CHILDREN)').args == List(
        "", ("%",), (), ("CHILDREN",))
    assert parse(b'A05 LIST (REMOTE SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" "Drafts" "Sent/%")'
                 ).args == List("", ("INBOX", "Drafts", "Sent/%"),
                                ("REMOTE", "SUBSCRIBED", "RECURSIVEMATCH"))
    # RFC 5819 LIST-STATUS.
    got = parse(b'A01 LIST "" % RETURN (STATUS (MESSAGES UNSEEN HIGHESTMODSEQ))').args
    assert got.returns == ("STATUS",)
    assert got.status_items == ("MESSAGES", "UNSEEN", "HIGHESTMODSEQ")
    assert parse(b'a LIST "" * RETURN ()').args.returns == ()


@pytest.mark.parametrize(("line", "message"), [
    (b'a LIST (RECURSIVEMATCH) "" *',
     "LIST: RECURSIVEMATCH needs another selection option (RFC 5258 §3)"),
    (b'a LIST (FOO) "" *', "LIST: unknown LIST selection option FOO (SUBSCRIBED REMOTE "
                           "RECURSIVEMATCH SPECIAL-USE)"),
    (b'a LIST "" * RETURN (FOO)', "LIST: unknown LIST RETURN option FOO (SUBSCRIBED CHILDREN "
                                  "SPECIAL-USE STATUS)"),
    (b'a LIST "" * RETURN (STATUS (MESSAGES) STATUS (UNSEEN))',
     "LIST: STATUS given twice in RETURN"),
    (b'a LIST "" * RETURN (STATUS ())', "LIST: the STATUS items must not be empty"),
    (b'a LIST "" * FOO', "LIST: expected RETURN (options) after the patterns, found 'FOO'"),
    (b'a LIST ""', "LIST: expected a space before the mailbox pattern, found end of line"),
    (b'a LIST "" ()', "LIST: the mailbox patterns must not be empty"),
])
def test_list_errors(line, message):
    assert error(line).message == message


def test_status():
    # Thunderbird's STATUS.
    assert parse(b'7 STATUS "INBOX" (UIDNEXT MESSAGES UNSEEN RECENT)').args == Status(
        "INBOX", ("UIDNEXT", "MESSAGES", "UNSEEN", "RECENT"))
    assert parse(b"a STATUS Sent (highestmodseq size deleted uidvalidity)").args.items == (
        "HIGHESTMODSEQ", "SIZE", "DELETED", "UIDVALIDITY")
    assert error(b"a STATUS Sent (FOO)").message.startswith("STATUS: unknown STATUS item FOO")
    assert error(b"a STATUS Sent ()").message == "STATUS: the STATUS items must not be empty"
    assert error(b"a STATUS Sent").message == (
        "STATUS: expected a space before the STATUS items, found end of line")


# --- APPEND ---


def test_append_as_mbsync_sends_it():
    msg = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
    line = b'a APPEND "Sent" (\\Seen) "28-Nov-2026 12:00:00 +0000" {%d+}\r\n%s' % (len(msg), msg)
    assert parse(line).args == Append("Sent", (AppendMessage(
        ("\\Seen",), datetime(2026, 11, 28, 12, 0, tzinfo=UTC), msg),))


def test_append_as_imaplib_sends_it():
    # imaplib: sync literal, Time2Internaldate's date, flags in parentheses.
    reader = CommandReader()
    reader.feed(b'JBKE4 APPEND INBOX (\\Flagged \\Seen) " 3-Jan-2027 09:05:01 -0800" {4}\r\n')
    assert reader.next() == NeedLiteral("JBKE4", 4)
    reader.feed(b"abcd\r\n")
    msg = reader.next().args.messages[0]
    assert msg.flags == ("\\Flagged", "\\Seen")
    assert msg.date == datetime(2027, 1, 3, 9, 5, 1, tzinfo=timezone(-timedelta(hours=8)))
    assert msg.data == b"abcd"


def test_append_variants():
    assert parse(b"a APPEND INBOX {3+}\r\nabc").args.messages == (
        AppendMessage((), None, b"abc"),)
    assert parse(b'a APPEND INBOX "1-Feb-2026 00:00:00 +0530" {0+}\r\n').args.messages[0].date \
        == datetime(2026, 2, 1, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert parse(b"a APPEND INBOX () {1+}\r\nx").args.messages[0].flags == ()
    assert parse(b"a APPEND INBOX (\\seen $Forwarded \\SEEN) {1+}\r\nx").args.messages[0].flags \
        == ("\\Seen", "$Forwarded")
    # RFC 3516: literal8 for binary content.
    m = parse(b"a APPEND INBOX ~{2+}\r\n\x00\xff").args.messages[0]
    assert (m.data, m.binary) == (b"\x00\xff", True)
    assert "2 bytes" in repr(m)


def test_multiappend():
    # RFC 3502 §6's example shape.
    got = parse(b"A003 APPEND saved-messages (\\Seen) {3+}\r\none "
                b'(\\Seen \\Draft) "28-Nov-2026 12:00:00 +0000" {3+}\r\ntwo {5+}\r\nthree').args
    assert [m.data for m in got.messages] == [b"one", b"two", b"three"]
    assert [m.flags for m in got.messages] == [("\\Seen",), ("\\Seen", "\\Draft"), ()]


@pytest.mark.parametrize(("line", "message"), [
    (b"a APPEND INBOX", "APPEND: expected a space before the message, found end of line"),
    (b'a APPEND INBOX "hello"', "APPEND: expected a date-time like \"28-Nov-2026 12:00:00 "
                                "+0000\", found '\"hello\"'"),
    (b"a APPEND INBOX hello", "APPEND: expected the message as a literal {size}, found 'hello'"),
    (b"a APPEND INBOX (\\Recent) {1+}\r\nx",
     "APPEND: \\Recent is set by the server and cannot be stored (RFC 3501 §2.3.2)"),
    (b"a APPEND INBOX (\\Foo) {1+}\r\nx", "APPEND: unknown system flag \\Foo"),
    (b"a APPEND INBOX (\\*) {1+}\r\nx",
     "APPEND: \\* is only meaningful in PERMANENTFLAGS, not as a flag"),
    (b'a APPEND INBOX "30-Feb-2026 12:00:00 +0000" {1+}\r\nx',
     "APPEND: invalid date: day is out of range for month"),
    (b'a APPEND INBOX "28-Foo-2026 12:00:00 +0000" {1+}\r\nx',
     "APPEND: unknown month 'Foo' (Jan, Feb, ... Dec)"),
    (b'a APPEND INBOX "28-Nov-2026 25:00:00 +0000" {1+}\r\nx',
     "APPEND: invalid time: hour must be in 0..23"),
    (b'a APPEND INBOX "28-Nov-2026 12:00:00 +2400" {1+}\r\nx',
     "APPEND: invalid time zone offset"),
    (b"a APPEND INBOX {1+}\r\nx ", "APPEND: expected the message as a literal {size}, found "
                                   "end of line"),
])
def test_append_errors(line, message):
    assert error(line).message == message


def test_quota_commands():
    from server.imap.parser import Mailbox, parse_command

    assert parse_command(b'a GETQUOTA ""').args == Mailbox("")
    assert parse_command(b"b GETQUOTAROOT INBOX").args == Mailbox("INBOX")
    assert parse_command(b"c GETQUOTAROOT &AMQ-rger").args == Mailbox("Ärger")
