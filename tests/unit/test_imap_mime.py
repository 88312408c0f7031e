"""server.imap.mime: ENVELOPE, BODY/BODYSTRUCTURE, BODY[section], BINARY[section].

Expected values are written from RFC 3501's examples (byte for byte where the RFC prints
them) and by reasoning from the RFC and from what Dovecot answers for the same shapes of
message; the comments say which. Sizes count octets of the part's body as stored (CRLF),
line counts its LFs.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.imap import mime
from server.imap.encode import encode
from server.imap.mime_address import _parse_list, _simple_list, address_list
from server.imap.mime_parts import MAX_DEPTH, MAX_PARTS, parse


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def read_imap(data: bytes):
    """Parse encoded IMAP data back into Python values, strictly: balanced parentheses,
    quoted strings of 7-bit text without CR/LF, literals of exactly their length and without
    NUL (RFC 3501 §4.3, §9). SP between list items is optional (``body-type-mpart`` and
    ``env-from`` have none)."""
    pos = 0

    def value():
        nonlocal pos
        c = data[pos : pos + 1]
        if c == b"(":
            pos += 1
            items = []
            while data[pos : pos + 1] != b")":
                assert pos < len(data), "unbalanced parentheses"
                if items and data[pos : pos + 1] == b" ":
                    pos += 1
                items.append(value())
            pos += 1
            return items
        if c == b'"':
            out = bytearray()
            pos += 1
            while data[pos : pos + 1] != b'"':
                assert pos < len(data), "unterminated quoted string"
                if data[pos : pos + 1] == b"\\":
                    pos += 1
                    assert data[pos : pos + 1] in (b"\\", b'"')
                b = data[pos]
                assert 1 <= b < 128 and b not in (10, 13), f"bad byte {b} in quoted string"
                out.append(b)
                pos += 1
            pos += 1
            return bytes(out)
        if c == b"{":
            end = data.index(b"}\r\n", pos)
            size = int(data[pos + 1 : end])
            pos = end + 3
            literal = data[pos : pos + size]
            assert len(literal) == size, "literal shorter than announced"
            assert b"\x00" not in literal, "NUL in a literal"
            pos += size
            return literal
        if data.startswith(b"NIL", pos):
            pos += 3
            return None
        end = pos
        while end < len(data) and data[end : end + 1].isdigit():
            end += 1
        assert end > pos, f"unexpected {data[pos:pos + 20]!r}"
        number = int(data[pos:end])
        pos = end
        return number

    result = value()
    assert pos == len(data), f"trailing data {data[pos:pos + 20]!r}"
    return result


def structure(message: bytes, extended: bool = True):
    """BODYSTRUCTURE as plain Python values, through the wire form."""
    return read_imap(encode(mime.bodystructure(message, extended)))


def env(header: bytes):
    return read_imap(encode(mime.envelope(header)))


TEXT_DEFAULT = [b"TEXT", b"PLAIN", [b"CHARSET", b"US-ASCII"], None, None, b"7BIT"]

# --- ENVELOPE ---

# RFC 3501 §6.4.5 / §8 sample message header, with the ENVELOPE the RFC prints for it.
RFC3501_HEADER = crlf(
    "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\n"
    "From: Terry Gray <gray@cac.washington.edu>\n"
    "Subject: IMAP4rev1 WG mtg summary and minutes\n"
    "To: imap@cac.washington.edu\n"
    "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\n"
    "Message-Id: <B27397-0100000@cac.washington.edu>\n"
    "MIME-Version: 1.0\n"
    "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n"
    "\n")
RFC3501_ENVELOPE = (
    b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'((NIL NIL "imap" "cac.washington.edu")) '
    b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
    b'NIL NIL "<B27397-0100000@cac.washington.edu>")')


def test_envelope_is_the_rfc3501_example_byte_for_byte():
    assert encode(mime.envelope(RFC3501_HEADER)) == RFC3501_ENVELOPE


def test_envelope_of_a_whole_message_reads_only_the_header():
    message = RFC3501_HEADER + crlf("From: not@header.example\nSubject: body text\n")
    assert encode(mime.envelope(message)) == RFC3501_ENVELOPE


def test_sender_and_reply_to_default_to_from_when_absent_or_empty():
    # RFC 3501 §7.4.2: "If the Sender or Reply-To lines are absent in the [RFC-2822] header,
    # or are present but empty, the server sets the corresponding member ... to be the same
    # value as the from member". Dovecot's imaptest case, same answer.
    header = crlf("From: user@domain (Real Name)\nSender: \nReply-To:\n\n")
    from_ = [[b"Real Name", None, b"user", b"domain"]]
    assert env(header) == [None, None, from_, from_, from_, None, None, None, None, None]


def test_sender_and_reply_to_kept_when_present():
    header = crlf("From: a@x\nSender: b@x\nReply-To: c@x\nTo: d@x\nCc: e@x\nBcc: f@x\n\n")
    got = env(header)
    assert [field[0][2] for field in got[2:8]] == [b"a", b"b", b"c", b"d", b"e", b"f"]


@pytest.mark.parametrize("header", [b"", b"\r\n", b"X-Other: 1\r\n\r\n", b"garbage line\r\n"])
def test_missing_fields_are_nil(header):
    assert env(header) == [None] * 10


def test_empty_subject_is_an_empty_string_not_nil():
    assert env(b"Subject:\r\n\r\n")[1] == b""


def test_header_values_are_unfolded_raw_and_not_decoded():
    # Clients decode RFC 2047 themselves; the server sends the field as it is, unfolded
    # (RFC 5322 §2.2.3: remove the CRLF, keep the whitespace that follows it).
    header = crlf("Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= and\n \tmore  \n"
                  "In-Reply-To: <a@x>\n <b@x>\n\n")
    got = env(header)
    assert got[1] == b"=?utf-8?q?Gr=C3=BC=C3=9Fe?= and \tmore"
    assert got[8] == b"<a@x> <b@x>"


def test_eight_bit_header_is_sent_as_a_literal_of_the_raw_bytes():
    header = "Subject: Grüße\r\nFrom: Jörg <jörg@exämple.de>\r\n\r\n".encode()
    wire = encode(mime.envelope(header))
    assert b"{7}\r\nGr\xc3\xbc\xc3\x9fe" in wire
    assert env(header)[2] == [["Jörg".encode(), None, "jörg".encode(), "exämple.de".encode()]]


def test_first_occurrence_of_a_field_counts():
    got = env(crlf("Subject: one\nFrom: a@x\nSubject: two\nFrom: b@x\n\n"))
    assert got[1] == b"one" and got[2] == [[None, None, b"a", b"x"]]


def test_nul_in_a_header_becomes_0x80():
    # RFC 3501 §4.3: no NUL in strings; Dovecot sends 0x80 instead.
    got = env(b"Subject: a\x00b\r\n\r\n")
    assert got[1] == b"a\x80b"


def test_groups_follow_rfc3501_group_syntax():
    # RFC 3501 §7.4.2: group start (NIL NIL groupname NIL), group end (NIL NIL NIL NIL);
    # the same as Dovecot's imaptest cases.
    header = crlf("To: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\n"
                  "Cc: undisclosed-recipients:;\n"
                  "Bcc: empty: (just a comment) ;\n\n")
    got = env(header)
    assert got[5] == [
        [None, None, b"group", None],
        [None, None, b"g1", b"d1.org"],
        [None, None, b"g2", b"d2.org"],
        [None, None, None, None],
        [None, None, b"group2", None],
        [None, None, b"g3", b"d3.org"],
        [None, None, None, None],
    ]
    assert got[6] == [[None, None, b"undisclosed-recipients", None], [None, None, None, None]]
    assert got[7] == [[None, None, b"empty", None], [None, None, None, None]]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"user@domain", [[None, None, b"user", b"domain"]]),
        (b"<user@domain>", [[None, None, b"user", b"domain"]]),
        (b"foo bar <user@domain>", [[b"foo bar", None, b"user", b"domain"]]),
        (b'"foo bar" <user@domain>', [[b"foo bar", None, b"user", b"domain"]]),
        (b'"Smith, John" <js@x.org>, b@y', [[b"Smith, John", None, b"js", b"x.org"],
                                            [None, None, b"b", b"y"]]),
        (b'"a \\"q\\" b" <x@y>', [[b'a "q" b', None, b"x", b"y"]]),
        (b"John Q. Public <jqp@x.com>", [[b"John Q. Public", None, b"jqp", b"x.com"]]),
        (b"John   Public\t<jp@x>", [[b"John Public", None, b"jp", b"x"]]),
        # RFC 5322 §4.4 obsolete routes: adl is "@a,@b" (RFC 3501 §7.4.2)
        (b"<@route:user@domain>", [[None, b"@route", b"user", b"domain"]]),
        (b"hello <@r1 ,@r2:user@domain>", [[b"hello", b"@r1,@r2", b"user", b"domain"]]),
        # Dovecot takes a comment as the name when there is no phrase
        (b"user@domain (Real Name)", [[b"Real Name", None, b"user", b"domain"]]),
        (b"Name (comment) <u@d>", [[b"Name", None, b"u", b"d"]]),
        (b'"john doe"@example.org', [[None, None, b"john doe", b"example.org"]]),
        (b"x@[192.0.2.1]", [[None, None, b"x", b"[192.0.2.1]"]]),
        (b"a@b,,c@d,", [[None, None, b"a", b"b"], [None, None, b"c", b"d"]]),
        # encoded words stay raw in names
        (b"=?utf-8?q?J=C3=B6rg?= <j@x>", [[b"=?utf-8?q?J=C3=B6rg?=", None, b"j", b"x"]]),
        # broken ones degrade to Dovecot's placeholders, never to a NIL host (a group)
        (b"MAILER-DAEMON", [[None, None, b"MAILER-DAEMON", b"MISSING_DOMAIN"]]),
        (b"hello <user>", [[b"hello", None, b"user", b"MISSING_DOMAIN"]]),
        (b"@domain", [[None, None, b"MISSING_MAILBOX", b"domain"]]),
        (b"<>", [[None, None, b"MISSING_MAILBOX", b"MISSING_DOMAIN"]]),
        (b'"unterminated <x@y>', [[None, None, b"unterminated <x@y>", b"MISSING_DOMAIN"]]),
        (b"a <b@c", [[b"a", None, b"b", b"c"]]),  # unclosed angle bracket
        (b"", None),
        (b"   ", None),
        (b"(only a comment)", None),
    ],
)
def test_address_lists(value, expected):
    assert address_list(value) == expected


@settings(max_examples=500)
@given(st.one_of(
    st.sampled_from([b"<<<>>>@@@,,;;::", b"((((", b'"\\', b"[", b"a:b:c;d;;", b"\\"]),
    st.text(alphabet=' \t"()<>[]@,;:\\.a\xe9', max_size=40).map(lambda s: s.encode()),
    st.binary(max_size=40)))
def test_junk_addresses_never_raise_and_never_give_a_nil_host_outside_groups(value):
    got = address_list(value) or []
    depth = 0
    for _name, _adl, mailbox, host in got:
        if host is None:
            depth += 1 if mailbox is not None else -1
            assert depth in (0, 1)
        else:
            assert mailbox is not None


_atext = st.text(alphabet="abcxyz0189.-_+", min_size=1, max_size=8)
_simple_address = st.one_of(
    st.builds(lambda local, d: f"{local}@{d}", _atext, _atext),
    st.builds(lambda n, local, d: f"{n} <{local}@{d}>",
              st.text(alphabet="ab éQ.", min_size=1, max_size=10).filter(lambda s: s.strip()),
              _atext, _atext),
    st.builds(lambda n, local, d: f'"{n}" <{local}@{d}>',
              st.text(alphabet='ab ,;:é\\"', max_size=10)
              .map(lambda s: s.replace("\\", "\\\\").replace('"', '\\"')), _atext, _atext),
)


@settings(max_examples=300)
@given(st.lists(_simple_address, min_size=1, max_size=5))
def test_fast_address_path_agrees_with_the_parser(addresses):
    text = ", ".join(addresses).encode("utf-8").decode("latin-1")
    fast = _simple_list(text)
    assert fast is None or fast == _parse_list(text)


_FIELD_TEXT = st.text(alphabet=' \t"()<>[]@,;:\\.aZ9\xe9\x00', max_size=30)


@given(st.dictionaries(st.sampled_from(["From", "Sender", "Reply-To", "To", "Cc", "Bcc",
                                        "Subject", "Date", "Message-ID", "In-Reply-To"]),
                       st.one_of(st.lists(_simple_address, max_size=3).map(", ".join),
                                 _FIELD_TEXT)))
def test_envelope_bytes_is_the_encoded_envelope(fields):
    header = "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode() + b"\r\nbody"
    assert mime.envelope_bytes(header) == encode(mime.envelope(header))
    assert mime.envelope_bytes(RFC3501_HEADER) == RFC3501_ENVELOPE


def test_remembered_address_lists_are_those_of_their_own_value():
    from server.imap import mime_address

    def env(frm: str, to: str) -> list:
        return mime.envelope(f"From: {frm}\r\nTo: {to}\r\n\r\n".encode())

    first = env("Ann <ann@a.test>", "Bob <bob@b.test>")
    again = env("Bob <bob@b.test>", "Ann <ann@a.test>")  # the same values, swapped
    assert (first[2], first[5]) == (again[5], again[2])
    assert b'"ann" "a.test"' in first[2] and b'"bob" "b.test"' in first[5]
    for i in range(mime_address._ENCODED_MAX + 10):  # more values than are remembered
        assert f'"u{i}" "c.test"'.encode() in env(f"u{i}@c.test", "x@y.test")[2]
    assert len(mime_address._ENCODED) <= mime_address._ENCODED_MAX
    assert env("Ann <ann@a.test>", "Bob <bob@b.test>") == first


# --- BODY / BODYSTRUCTURE ---


def _lines(size: int, count: int, char: bytes = b"x") -> bytes:
    """``count`` CRLF-terminated lines totalling ``size`` octets."""
    room = size - 2 * count
    lengths = [room // count + (1 if i < room % count else 0) for i in range(count)]
    return b"".join(char * n + b"\r\n" for n in lengths)


def test_single_part_body_is_the_rfc3501_example():
    # RFC 3501 §7.4.2: BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)
    message = RFC3501_HEADER + _lines(3028, 92)
    assert encode(mime.bodystructure(message, extended=False)) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)')
    assert encode(mime.bodystructure(message)) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92 NIL NIL NIL NIL)')


def test_multipart_body_is_the_rfc3501_example():
    # RFC 3501 §6.4.5 FETCH example: BODY (("TEXT" ...)("TEXT" ...) "MIXED"), with no space
    # between the two bodies (body-type-mpart = 1*body SP media-subtype).
    message = (
        crlf("From: a@x\nMIME-Version: 1.0\nContent-Type: MULTIPART/MIXED; BOUNDARY=\"x\"\n\n"
             "--x\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\n\n")
        + _lines(1152, 23)
        + crlf("\n--x\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME=cc.diff\n"
               "Content-ID: <960723163407.20117h@cac.washington.edu>\n"
               "Content-Description: Compiler diff\nContent-Transfer-Encoding: BASE64\n\n")
        + _lines(4554, 73, b"Q")
        + crlf("\n--x--\n"))
    assert encode(mime.bodystructure(message, extended=False)) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") '
        b'"<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73) "MIXED")')


# The shape of Dovecot's own BODYSTRUCTURE test (test-imap-bodystructure.c): folded boundary,
# every extension field, an encapsulated multipart/alternative, an invalid encoding.
INNER = crlf(
    "From: bea@example.org\n"
    "To: cid@example.org, dan@example.org\n"
    "Date: Tue, 03 Jan 2023 10:00:00 +0100\n"
    "Subject: inner\n"
    'Content-Type: multipart/alternative; boundary="in"\n'
    "\n"
    "Inner preamble\n"
    "--in\n"
    "Content-Type: text/html\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "<p>hi</p>\n"
    "\n"
    "--in\n"
    "Content-Type: text/plain\n"
    "Content-Transfer-Encoding: ?bad\n"
    "\n"
    "hi again\n"
    "\n"
    "--in--\n"
    "Inner epilogue\n")
NESTED = crlf(
    "From: ann@example.org\n"
    "Date: Mon, 02 Jan 2023 09:00:00 +0000\n"
    "Mime-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="one\n'
    ' two"\n'
    "\n"
    "Preamble\n"
    "\n"
    "--one two\n"
    'Content-Type: text/x-custom; charset=us-ascii; note="say \\"hi\\""\n'
    "Content-ID: <part1@example.org>\n"
    "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n"
    "Content-Disposition: inline; size=3\n"
    "Content-Description: greeting\n"
    "Content-Language: en, de\n"
    "Content-Location: http://example.org/greeting.txt\n"
    "\n"
    "hi\n"
    "\n"
    "--one two\n"
    "Content-Type: message/rfc822\n"
    "\n") + INNER + crlf("\n--one two--\nEpilogue\n")


def test_nested_message_bodystructure():
    inner_envelope = [b"Tue, 03 Jan 2023 10:00:00 +0100", b"inner",
                      [[None, None, b"bea", b"example.org"]],
                      [[None, None, b"bea", b"example.org"]],
                      [[None, None, b"bea", b"example.org"]],
                      [[None, None, b"cid", b"example.org"], [None, None, b"dan", b"example.org"]],
                      None, None, None, None]
    assert INNER.count(b"\n") == 21  # the CRLF before "--one two--" is the delimiter's
    assert structure(NESTED) == [
        [b"TEXT", b"X-CUSTOM", [b"CHARSET", b"us-ascii", b"NOTE", b'say "hi"'],
         b"<part1@example.org>", b"greeting", b"7BIT", 4, 1,  # "hi\r\n"
         b"Q2hlY2sgSW50ZWdyaXR5IQ==", [b"INLINE", [b"SIZE", b"3"]], [b"en", b"de"],
         b"http://example.org/greeting.txt"],
        [b"MESSAGE", b"RFC822", None, None, None, b"7BIT", len(INNER), inner_envelope,
         [[b"TEXT", b"HTML", [b"CHARSET", b"US-ASCII"], None, None, b"8BIT", 11, 1,  # <p>hi</p>
           None, None, None, None],
          [b"TEXT", b"PLAIN", [b"CHARSET", b"US-ASCII"], None, None, b"7BIT", 10, 1,
           None, None, None, None],
          b"ALTERNATIVE", [b"BOUNDARY", b"in"], None, None, None],
         21, None, None, None, None],
        b"MIXED", [b"BOUNDARY", b"one two"], None, None, None,
    ]
    # BODY: the same without extension data, also inside the encapsulated message
    assert structure(NESTED, extended=False) == [
        [b"TEXT", b"X-CUSTOM", [b"CHARSET", b"us-ascii", b"NOTE", b'say "hi"'],
         b"<part1@example.org>", b"greeting", b"7BIT", 4, 1],
        [b"MESSAGE", b"RFC822", None, None, None, b"7BIT", len(INNER), inner_envelope,
         [[b"TEXT", b"HTML", [b"CHARSET", b"US-ASCII"], None, None, b"8BIT", 11, 1],
          [b"TEXT", b"PLAIN", [b"CHARSET", b"US-ASCII"], None, None, b"7BIT", 10, 1],
          b"ALTERNATIVE"],
         21],
        b"MIXED",
    ]


ALTERNATIVE = crlf(
    "From: a@x\nSubject: alt\nMIME-Version: 1.0\n"
    'Content-Type: multipart/alternative; boundary="=_alt"\n'
    "\n"
    "--=_alt\n"
    "Content-Type: text/plain; charset=utf-8; format=flowed\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "Gr=C3=BC=C3=9Fe\n"
    "--=_alt\n"
    "Content-Type: text/html; charset=utf-8\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "PHA+R3LDvMOfZTwvcD4=\n"
    "--=_alt--\n")


def test_multipart_alternative():
    assert structure(ALTERNATIVE) == [
        [b"TEXT", b"PLAIN", [b"CHARSET", b"utf-8", b"FORMAT", b"flowed"], None, None,
         b"QUOTED-PRINTABLE", 15, 0, None, None, None, None],  # "Gr=C3=BC=C3=9Fe", no LF
        [b"TEXT", b"HTML", [b"CHARSET", b"utf-8"], None, None, b"BASE64", 20, 0,
         None, None, None, None],
        b"ALTERNATIVE", [b"BOUNDARY", b"=_alt"], None, None, None,
    ]


ATTACHMENTS = crlf(
    "From: a@x\nMIME-Version: 1.0\n"
    "Content-Type: multipart/mixed; boundary=outer\n"
    "\n"
    "--outer\n"
    "Content-Type: text/plain\n"
    "\n"
    "See attached.\n"
    "--outer\n"
    "Content-Type: image/png\n"
    "Content-Transfer-Encoding: base64\n"
    'Content-Disposition: attachment; filename="pic.png"\n'
    "\n"
    "iVBORw0KGgo=\n"
    "--outer\n"
    "Content-Type: application/pdf; name*0=\"long \"; name*1=\"name.pdf\"\n"
    "Content-Disposition: attachment; filename*=utf-8''%E2%82%AC%20rates.pdf\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "JVBERi0=\n"
    "--outer\n"
    "Content-Type: message/rfc822\n"
    "Content-Disposition: attachment\n"
    "\n"
    "Subject: forwarded\n"
    "\n"
    "old text\n"
    "--outer--\n")


def test_multipart_mixed_with_attachments():
    got = structure(ATTACHMENTS)
    assert got[0] == TEXT_DEFAULT + [13, 0, None, None, None, None]  # "See attached."
    # no parameters: NIL, not an empty list (RFC 3501 body-fld-param); no line count
    assert got[1] == [b"IMAGE", b"PNG", None, None, None, b"BASE64", 12, None,
                      [b"ATTACHMENT", [b"FILENAME", b"pic.png"]], None, None]
    # RFC 2231: continuations joined; an extended value stays encoded under NAME* (as in
    # Dovecot) for the client to decode
    assert got[2] == [b"APPLICATION", b"PDF", [b"NAME", b"long name.pdf"], None, None,
                      b"BASE64", 8, None,
                      [b"ATTACHMENT", [b"FILENAME*", b"utf-8''%E2%82%AC%20rates.pdf"]],
                      None, None]
    assert got[3][:7] == [b"MESSAGE", b"RFC822", None, None, None, b"7BIT", 30]
    assert got[3][7][1] == b"forwarded"
    assert got[3][8] == TEXT_DEFAULT + [8, 0, None, None, None, None]  # "old text"
    assert got[3][9:] == [2, None, [b"ATTACHMENT", None], None, None]
    assert got[4:] == [b"MIXED", [b"BOUNDARY", b"outer"], None, None, None]


def test_rfc2231_mixed_plain_and_extended_pieces_are_percent_encoded():
    message = crlf("Content-Type: text/plain; title*0*=us-ascii'en'This%20is; "
                   'title*1=" fun"; title*2*=%2A\n\nx')
    assert structure(message)[2] == [b"TITLE*", b"us-ascii'en'This%20is%20fun%2A",
                                     b"CHARSET", b"US-ASCII"]


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, [b"TEXT", b"PLAIN", [b"CHARSET", b"US-ASCII"]]),  # RFC 2045 §5.2
        (b"text/html", [b"TEXT", b"HTML", [b"CHARSET", b"US-ASCII"]]),  # as Dovecot adds it
        (b"Text/Plain; CHARSET=\"ISO-8859-1\" (comment)", [b"TEXT", b"PLAIN",
                                                           [b"CHARSET", b"ISO-8859-1"]]),
        (b"text / plain ; charset = utf-8", [b"TEXT", b"PLAIN", [b"CHARSET", b"utf-8"]]),
        (b"image/png", [b"IMAGE", b"PNG", None]),
        # RFC 2045 §5.2: an invalid Content-Type is treated as the default
        (b"garbage", [b"TEXT", b"PLAIN", [b"CHARSET", b"US-ASCII"]]),
        (b"text/", [b"TEXT", b"PLAIN", [b"CHARSET", b"US-ASCII"]]),
        (b"", [b"TEXT", b"PLAIN", [b"CHARSET", b"US-ASCII"]]),
        (b"t\xc3\xa9xt/plain", [b"TEXT", b"PLAIN", [b"CHARSET", b"US-ASCII"]]),
        # a multipart without a boundary is no multipart (RFC 2046 §5.1.1) -> text/plain
        (b"multipart/mixed", [b"TEXT", b"PLAIN", [b"CHARSET", b"US-ASCII"]]),
        (b"application/x-thing; name=My File.txt; x=", [b"APPLICATION", b"X-THING",
                                                         [b"NAME", b"My File.txt", b"X", b""]]),
    ],
)
def test_content_type_defaults_and_degradation(content_type, expected):
    header = b"" if content_type is None else b"Content-Type: " + content_type + b"\r\n"
    assert structure(header + b"\r\nbody\r\n")[:3] == expected


@pytest.mark.parametrize(
    ("cte", "expected"),
    [(None, b"7BIT"), (b"base64", b"BASE64"), (b"Quoted-Printable", b"QUOTED-PRINTABLE"),
     (b"?invalid", b"7BIT"), (b"x-uuencode", b"X-UUENCODE"), (b"8bit (comment)", b"8BIT")],
)
def test_transfer_encoding(cte, expected):
    header = b"" if cte is None else b"Content-Transfer-Encoding: " + cte + b"\r\n"
    assert structure(header + b"\r\nbody")[5] == expected


def test_digest_parts_default_to_message_rfc822():
    # RFC 2046 §5.1.5
    message = crlf("Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: one\n\n1\n"
                   "--d\nContent-Type: text/plain\n\nnot a message\n--d--\n")
    got = structure(message)
    assert got[0][:2] == [b"MESSAGE", b"RFC822"] and got[0][7][1] == b"one"
    assert got[1][:2] == [b"TEXT", b"PLAIN"]


class TestBrokenMime:
    def test_boundary_never_found_gives_one_empty_text_part(self):
        # RFC 3501 needs 1*body; Dovecot answers with an empty text/plain in this case.
        message = crlf("Content-Type: multipart/mixed; boundary=nothere\n\njust text\n")
        assert structure(message) == [TEXT_DEFAULT + [0, 0, None, None, None, None],
                                       b"MIXED", [b"BOUNDARY", b"nothere"], None, None, None]
        assert mime.section(message, (1,), None) == b""

    def test_missing_close_delimiter_ends_with_the_data(self):
        message = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b\n\ntwo\n")
        got = structure(message)
        assert [part[6] for part in got[:2]] == [3, 5]  # "one", "two\r\n"
        assert mime.section(message, (2,), None) == b"two\r\n"

    def test_delimiter_must_start_a_line_and_not_continue(self):
        message = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\n"
                       "x --b\n--bc\n--b \t\n\nsecond\n--b--garbage\n")
        assert mime.section(message, (1,), None) == b"x --b\r\n--bc"
        assert mime.section(message, (2,), None) == b"second"  # padding after --b allowed

    def test_close_delimiter_at_the_very_end(self):
        message = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\nlast\n--b--")
        assert mime.section(message, (1,), None) == b"last"

    def test_empty_parts(self):
        message = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n--b\n\n--b--\n")
        got = structure(message)
        assert got[0][6] == 0 and got[1][6] == 0

    def test_part_without_blank_line_is_all_header(self):
        message = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n"
                       "Content-Type: text/html\n--b--\n")
        got = structure(message)
        assert got[0][:2] == [b"TEXT", b"HTML"] and got[0][6] == 0

    def test_no_header_at_all(self):
        message = crlf("\nbody only\n")
        assert structure(message) == TEXT_DEFAULT + [11, 1, None, None, None, None]
        assert env(message) == [None] * 10
        assert mime.section(message, (), "HEADER") == b"\r\n"
        assert mime.section(message, (), "TEXT") == b"body only\r\n"

    def test_header_only_message(self):
        message = crlf("Subject: no body\nFrom: a@x\n")
        assert structure(message) == TEXT_DEFAULT + [0, 0, None, None, None, None]
        assert env(message)[1] == b"no body"
        assert mime.section(message, (), "HEADER") == message
        assert mime.section(message, (), "TEXT") == b""
        assert mime.section(message, (1,), None) == b""

    def test_empty_message(self):
        assert structure(b"") == TEXT_DEFAULT + [0, 0, None, None, None, None]
        assert env(b"") == [None] * 10

    def test_lf_only_message(self):
        # Stored mail is CRLF, but mail written by other tools may not be: sizes and line
        # counts are those of the bytes as they are, so they agree with BODY[] fetches.
        message = NESTED.replace(b"\r\n", b"\n")
        got = structure(message)
        assert got[0][6:8] == [3, 1]  # "hi\n"
        assert got[1][6] == len(INNER.replace(b"\r\n", b"\n")) and got[1][9] == 21
        assert env(message)[1] is None and env(message)[2][0][2] == b"ann"
        assert mime.section(message, (2, 2), None) == b"hi again\n"
        assert mime.section(message, (), "HEADER").endswith(b'two"\n\n')

    @pytest.mark.parametrize("kind", ["multipart", "message"])
    def test_deep_nesting_is_capped(self, kind):
        levels = 1000
        if kind == "multipart":
            message = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n"
                               % (i, i) for i in range(levels)) + b"\r\ncore\r\n"
        else:
            message = b"Content-Type: message/rfc822\r\n\r\n" * levels + b"\r\ncore\r\n"
        start = time.perf_counter()
        got = structure(message)
        assert time.perf_counter() - start < 2
        depth = 0
        while got[0] in (b"MESSAGE",) or isinstance(got[0], list):
            got = got[8] if got[0] == b"MESSAGE" else got[0]
            depth += 1
        assert depth == MAX_DEPTH
        assert got[:2] == [b"APPLICATION", b"OCTET-STREAM"]  # opaque past the limit
        mime.section(message, (1,) * 200, None)
        mime.envelope(message)

    def test_part_count_is_capped(self):
        message = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                   + b"--b\r\n\r\nx\r\n" * (MAX_PARTS + 500) + b"--b--\r\n")
        start = time.perf_counter()
        root = parse(message)
        assert time.perf_counter() - start < 5
        assert len(root.children) < MAX_PARTS
        # the last part takes the rest: nothing is lost from BODY[n]
        assert mime.section(message, (len(root.children),), None).startswith(b"x\r\n--b")


# --- BODY[section] ---

# RFC 3501 §6.4.5's part-numbering example, with a marker in every leaf.
SECTION_INNER3_HEADER = crlf("Subject: three\nContent-Type: multipart/mixed; boundary=m3\n\n")
SECTION_INNER3_TEXT = crlf(
    "--m3\nContent-Type: text/plain\n\npart 3.1\n"
    "--m3\nContent-Type: application/octet-stream\n\npart 3.2\n--m3--\n")
SECTION_INNER42_HEADER = crlf(
    "Subject: four-two\nContent-Type: multipart/mixed; boundary=m42\n\n")
SECTION_ALT = crlf(
    "--m422\nContent-Type: text/plain\n\npart 4.2.2.1\n"
    "--m422\nContent-Type: text/richtext\n\npart 4.2.2.2\n--m422--")
SECTION_INNER42_TEXT = crlf(
    "--m42\nContent-Type: text/plain\n\npart 4.2.1\n"
    "--m42\nContent-Type: multipart/alternative; boundary=m422\n\n") + SECTION_ALT + crlf(
    "\n--m42--")
SECTION_PART4 = crlf(
    "--m4\nContent-Type: image/gif\n\nGIF89a\n"
    "--m4\nContent-Type: message/rfc822\n\n") + SECTION_INNER42_HEADER + SECTION_INNER42_TEXT + (
    crlf("\n--m4--"))
SECTION_HEADER = crlf("From: a@x\nSubject: parts\nContent-Type: multipart/mixed; boundary=top\n\n")
SECTION_TEXT = crlf(
    "--top\nContent-Type: text/plain\n\npart 1\n"
    "--top\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
    "cGFydCAy\n"
    "--top\nContent-Type: message/rfc822\n\n") + SECTION_INNER3_HEADER + SECTION_INNER3_TEXT + (
    crlf("\n--top\nContent-Type: multipart/mixed; boundary=m4\n\n")) + SECTION_PART4 + crlf(
    "\n--top--\n")
SECTIONS = SECTION_HEADER + SECTION_TEXT


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", SECTIONS),
        ("HEADER", SECTION_HEADER),
        ("TEXT", SECTION_TEXT),
        ("1", b"part 1"),
        ("2", b"cGFydCAy"),
        ("3", SECTION_INNER3_HEADER + SECTION_INNER3_TEXT),
        ("3.HEADER", SECTION_INNER3_HEADER),
        ("3.TEXT", SECTION_INNER3_TEXT),
        ("3.MIME", b"Content-Type: message/rfc822\r\n\r\n"),
        ("3.1", b"part 3.1"),
        ("3.2", b"part 3.2"),
        ("4", SECTION_PART4),
        ("4.1", b"GIF89a"),
        ("4.1.MIME", b"Content-Type: image/gif\r\n\r\n"),
        ("4.2", SECTION_INNER42_HEADER + SECTION_INNER42_TEXT),
        ("4.2.HEADER", SECTION_INNER42_HEADER),
        ("4.2.TEXT", SECTION_INNER42_TEXT),
        ("4.2.1", b"part 4.2.1"),
        ("4.2.2", SECTION_ALT),
        ("4.2.2.1", b"part 4.2.2.1"),
        ("4.2.2.2", b"part 4.2.2.2"),
        # nonexistent parts: RFC 3501 "an empty string"
        ("5", b""), ("0", b""), ("1.1", b""), ("3.3", b""), ("4.2.2.3", b""), ("4.1.1", b""),
        # HEADER/TEXT only apply to MESSAGE/RFC822 parts (RFC 3501 §6.4.5; Dovecot: empty)
        ("1.HEADER", b""), ("4.TEXT", b""), ("4.1.HEADER.FIELDS", b""),
        ("MIME", b""),
    ],
)
def test_rfc3501_part_numbering(spec, expected):
    numbers, text = [], None
    for i, piece in enumerate(spec.split(".") if spec else []):
        if piece.isdigit():
            numbers.append(int(piece))
        else:
            text = ".".join(spec.split(".")[i:])
            break
    assert mime.section(SECTIONS, tuple(numbers), text, ("subject",)) == expected


def test_single_part_message_has_only_part_1():
    message = RFC3501_HEADER + b"the body\r\n"
    assert mime.section(message, (1,), None) == b"the body\r\n"
    assert mime.section(message, (1,), "MIME") == RFC3501_HEADER  # as Dovecot answers
    assert mime.section(message, (2,), None) == b""
    assert mime.section(message, (1,), "HEADER") == b""
    assert mime.section(message, (1,), "TEXT") == b""


def test_top_level_message_rfc822_numbers_continue_inside():
    message = crlf("Content-Type: message/rfc822\n\nSubject: in\n\ninner\n")
    assert mime.section(message, (1,), None) == crlf("Subject: in\n\ninner\n")
    assert mime.section(message, (1, 1), None) == b"inner\r\n"
    assert mime.section(message, (1,), "HEADER") == crlf("Subject: in\n\n")


class TestHeaderFields:
    header = crlf("Received: one\n\tcontinued\nSubject: Hello\nFrom: a@x\nsubject: again\n"
                  "X-Empty:\nNot a field\n\nbody\nSubject: in body\n")

    def test_fields_case_insensitive_in_message_order_with_blank_line(self):
        got = mime.section(self.header, (), "HEADER.FIELDS", ("FROM", "SUBJECT"))
        assert got == crlf("Subject: Hello\nFrom: a@x\nsubject: again\n\n")

    def test_continuation_lines_are_kept(self):
        got = mime.section(self.header, (), "HEADER.FIELDS", ("received",))
        assert got == crlf("Received: one\n\tcontinued\n\n")

    def test_no_match_is_just_the_blank_line(self):
        assert mime.section(self.header, (), "HEADER.FIELDS", ("bcc",)) == b"\r\n"

    def test_fields_not(self):
        got = mime.section(self.header, (), "HEADER.FIELDS.NOT", ("subject", "received"))
        assert got == crlf("From: a@x\nX-Empty:\nNot a field\n\n")

    def test_header_without_final_line_end(self):
        got = mime.section(b"Subject: x", (), "HEADER.FIELDS", ("subject",))
        assert got == b"Subject: x\r\n\r\n"

    def test_nested_message_fields(self):
        got = mime.section(SECTIONS, (3,), "HEADER.FIELDS", ("Subject",))
        assert got == b"Subject: three\r\n\r\n"


def test_nul_is_sent_as_0x80_and_sizes_keep():
    message = b"Subject: x\r\n\r\na\x00b\r\n"
    assert mime.section(message, (), None) == b"Subject: x\r\n\r\na\x80b\r\n"
    assert mime.section(message, (1,), None) == b"a\x80b\r\n"
    assert structure(message)[6] == 5


@pytest.mark.parametrize(
    ("origin", "count", "expected"),
    [(0, 3, b"012"), (2, 100, b"23456789"), (10, 5, b""), (11, 5, b""), (9, 1, b"9"),
     (0, 0, b""), (3, 0, b"")],
)
def test_partial(origin, count, expected):
    # RFC 3501 §6.4.5: past the end gives what there is, or an empty string.
    assert mime.partial(b"0123456789", origin, count) == expected


def test_header_helpers():
    assert mime.header_section(NESTED).endswith(b'two"\r\n\r\n')
    assert NESTED[mime.body_offset(NESTED):].startswith(b"Preamble")
    assert mime.body_offset(b"a: b\n\nbody") == 6
    assert mime.body_offset(b"a: b\r\n\r\nbody") == 8
    assert mime.body_offset(b"a: b\n\r\nbody") == 7
    assert mime.body_offset(b"a: b\r\n") == 6
    assert mime.header_value(NESTED, "content-type") == b'multipart/mixed; boundary="one two"'
    assert mime.header_value(NESTED, "MIME-VERSION") == b"1.0"
    assert mime.header_value(NESTED, "x-missing") is None


# --- BINARY[section] (RFC 3516) ---

BINARY = crlf(
    "Content-Type: multipart/mixed; boundary=b\n\n"
    "--b\nContent-Transfer-Encoding: base64\n\n"
    "aGVs\nbG8g\nd29y bGQ\n"                        # "hello world", padding missing
    "--b\nContent-Transfer-Encoding: quoted-printable\n\n"
    "caf=C3=A9 soft=\nbreak=3D\n"
    "--b\nContent-Transfer-Encoding: 8bit\n\n"
    "raw \xff\n"
    "--b\nContent-Transfer-Encoding: x-uuencode\n\n"
    "begin 644 x\n"
    "--b\nContent-Transfer-Encoding: BASE64\n\n"
    "!!AAEC\x00Aw==junk\n"
    "--b--\n").replace(b"\xc3\xbf", b"\xff")


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ((1,), b"hello world"),
        # the line end before a delimiter is the delimiter's (RFC 2046 §5.1.1)
        ((2,), "café soft".encode() + b"break="),
        ((3,), b"raw \xff"),
        ((4,), None),  # unknown encoding: the caller answers [UNKNOWN-CTE] (RFC 3516 §4.3)
        # RFC 2045 §6.8: non-alphabet characters ignored, "=" ends the data
        ((5,), b"\x00\x01\x02\x03"),
        ((6,), b""),
        ((1, 1), b""),
    ],
)
def test_binary_section(part, expected):
    assert mime.binary_section(BINARY, part) == expected
    assert mime.binary_size(BINARY, part) == (None if expected is None else len(expected))


def test_binary_of_the_whole_message_and_of_a_multipart_is_as_stored():
    assert mime.binary_section(BINARY, ()) == BINARY
    message = crlf("Content-Type: multipart/mixed; boundary=o\n\n--o\n"
                   "Content-Type: multipart/mixed; boundary=i\n\n--i\n\nx\n--i--\n--o--\n")
    assert mime.binary_section(message, (1,)) == crlf("--i\n\nx\n--i--")


# --- never raise, always valid IMAP ---

_FRAGMENTS = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: message/rfc822\r\n",
    b'Content-Type: multipart/digest; boundary="b"\r\n', b"Content-Type: text/plain\r\n",
    b"Content-Type: multipart/alternative; boundary=c\r\n", b"--b\r\n", b"--b--\r\n", b"--c\n",
    b"\r\n", b"\n", b"\r", b"From: a@b\r\n", b"To: x:;\r\n", b"Cc: <@r:a@b>, (c) d\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
    b" folded\r\n", b"\tfolded\r\n", b"text\r\n", b"\x00", b"(", b'"', b"\\", b"\xff\xfe",
    b"Content-Type: text/plain; a*0*=utf-8''%E2; a*1=x; a*=y\r\n",
    b'Content-Disposition: attachment; filename="a\r\n', b"Content-Language: en, (x) de\r\n",
    b"Subject: =?utf-8?q?=C3?=\r\n", b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n",
])
_MESSAGES = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(_FRAGMENTS, st.binary(max_size=12)), max_size=60).map(b"".join),
)


def _check_body(body, extended: bool) -> None:
    """RFC 3501 §9 body: either 1*body SP subtype [ext], or a single-part body."""
    assert isinstance(body, list) and body
    if isinstance(body[0], list):
        n = 0
        while n < len(body) and isinstance(body[n], list):
            _check_body(body[n], extended)
            n += 1
        assert isinstance(body[n], bytes)  # media-subtype
        assert len(body) == n + (5 if extended else 1)
        return
    kind, subtype, params, _id, _desc, enc, size = body[:7]
    assert isinstance(kind, bytes) and isinstance(subtype, bytes) and isinstance(enc, bytes)
    assert params is None or (len(params) % 2 == 0 and params)
    assert isinstance(size, int)
    rest = body[7:]
    if kind == b"TEXT":
        assert isinstance(rest[0], int)
        rest = rest[1:]
    elif (kind, subtype) == (b"MESSAGE", b"RFC822"):
        assert isinstance(rest[0], list) and len(rest[0]) == 10
        _check_body(rest[1], extended)
        assert isinstance(rest[2], int)
        rest = rest[3:]
    assert len(rest) == (4 if extended else 0)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_MESSAGES, st.lists(st.integers(0, 4), max_size=4),
       st.sampled_from([None, "HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT"]))
def test_arbitrary_messages_never_raise_and_encode_validly(message, part, text):
    for extended in (True, False):
        _check_body(read_imap(encode(mime.bodystructure(message, extended))), extended)
    envelope = read_imap(encode(mime.envelope(message)))
    assert len(envelope) == 10
    data = mime.section(message, tuple(part), text, ("from", "content-type"))
    assert b"\x00" not in data
    mime.binary_section(message, tuple(part))
    mime.partial(data, 3, 5)
