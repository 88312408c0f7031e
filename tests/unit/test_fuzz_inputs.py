"""Property and fuzz tests for what arrives from the internet outside the IMAP command reader
(tests/unit/test_imap_parser_fuzz.py has that): Maildir file names, SMTP paths and addresses,
MIME structure, and POP3 command lines. Whatever the input, each answers with its own error
type or a value that survives a round trip, never another exception."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from maildir.naming import parse_name
from server.addresses import AddressError, normalize_domain, parse_address, parse_path
from server.imap.mime import section
from server.imap.mime_parts import bodystructure, parse
from server.pop3.session import Session

FAST = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# --- Maildir file names -------------------------------------------------------------------


@FAST
@given(st.text(max_size=200))
@example("1700000000.M1P2Q3.host,S=123,W=130:2,FS")
@example("x,S=12,S=13:2,")
@example("..")
@example("a/../../etc/passwd")
def test_maildir_name_round_trips_or_is_refused(name):
    try:
        parsed = parse_name(name)
    except ValueError:
        # Only what cannot be a file inside cur/ or new/ is refused.
        assert name in ("", ".", "..") or "/" in name or "\0" in name
        return
    assert parsed.filename() == name  # exact inverse: a rename never changes the unique part
    assert "/" not in parsed.base and "\0" not in parsed.base
    assert parsed.flags == "".join(sorted(set(parsed.flags)))


# --- SMTP paths and addresses -------------------------------------------------------------

ADDRESSY = st.text(
    alphabet=st.sampled_from(list('abcXYZ019.-_+@<>":\\[]() ,;%!\u00e9\u4e2d\x00\r\n')),
    max_size=80)


@FAST
@given(st.one_of(st.text(max_size=120), ADDRESSY))
@example("<@a.example,@b.example:user@c.example> SIZE=100")
@example('<"user@remote"@example.test>')
@example("<postmaster>")
@example("<user@[IPv6:::1]>")
def test_smtp_path_parses_or_raises_address_error(text):
    for allow in (False, True):
        try:
            mailbox, params = parse_path(text, allow_postmaster=allow)
        except AddressError:
            continue
        assert "\r" not in mailbox and "\n" not in mailbox and "\0" not in mailbox
        if mailbox and mailbox != "Postmaster":
            again = parse_address(mailbox)  # what we store re-parses to itself
            assert str(again) == mailbox


@FAST
@given(st.one_of(st.text(max_size=120), ADDRESSY))
@example("Alice@Example.TEST")
@example("a@xn--bcher-kva.example")
@example("a@b\u00fccher.example")
def test_address_is_stable_once_normalised(text):
    try:
        addr = parse_address(text)
    except AddressError:
        return
    canonical = str(addr)
    assert str(parse_address(canonical)) == canonical
    assert addr.domain == normalize_domain(addr.domain)
    assert not any(c in canonical for c in "\r\n\0")


# --- MIME structure -----------------------------------------------------------------------

_HEADERS = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b'Content-Type: multipart/alternative; boundary="b"\r\n',
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/plain; charset=utf-8\r\n",
    b"Content-Type: text/html\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC.txt\r\n",
    b"Subject: =?utf-8?q?hi?=\r\n",
    b"Content-Type: multipart/mixed\r\n",  # no boundary
    b"\r\n",
])
_BODY = st.sampled_from([b"--b\r\n", b"--b--\r\n", b"text\r\n", b"\r\n", b"\xff\xfe\r\n",
                         b"--b\r\nContent-Type: message/rfc822\r\n\r\n", b"=\r\n", b"\x00"])


@st.composite
def messages(draw):
    parts = draw(st.lists(st.one_of(_HEADERS, _BODY), max_size=40))
    raw = draw(st.binary(max_size=60))
    return b"".join(parts) + raw


@FAST
@given(messages())
@example(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n" * 500)
@example(b"Content-Type: message/rfc822\r\n\r\n" * 200)
def test_bodystructure_never_fails_and_sections_stay_inside(message):
    structure = bodystructure(message)
    assert isinstance(structure, list)
    root = parse(message)
    assert root is not None
    for part in ((), (1,), (1, 1), (2,), (3, 2, 1)):
        for text in (None, "HEADER", "TEXT", "MIME"):
            if text == "MIME" and not part:
                continue
            try:
                data = section(message, part, text, None)
            except (ValueError, KeyError):
                continue
            # A section is always a slice of the message (or empty): never more bytes than sent.
            assert data is None or len(data) <= len(message)


# --- POP3 command lines -------------------------------------------------------------------


class _NoContext:
    """A session that never gets past AUTHORIZATION without TLS touches no context."""


@FAST
@given(st.binary(max_size=300))
@example(b"USER alice")
@example(b"PASS secret")
@example(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==")
@example(b"STLS")
@example(b"RETR 1")
@example(b"\xff\xfe\x00QUIT")
def test_pop3_lines_before_login_get_one_line_answers(line):
    session = Session(_NoContext(), conn_id="fuzz", peer_ip="192.0.2.1", tls=False,
                      stls_offered=True)
    name = line.split(b" ", 1)[0].upper()
    if name in (b"STLS", b"QUIT"):
        return  # handled by the connection layer (TLS upgrade, close), not here
    replies = asyncio.run(session.handle(line))
    assert replies, line
    first = replies[0]
    assert first.startswith((b"+OK", b"-ERR", b"+ ")) and first.endswith(b"\r\n")
    for reply in replies:
        # One reply line never carries the client's CR/LF back (no response splitting).
        assert reply.count(b"\r\n") == 1 or reply == b".\r\n"
    if first.startswith(b"+OK") and name not in (b"CAPA", b"NOOP"):
        raise AssertionError(f"{line!r} succeeded before login without TLS: {replies!r}")
    assert session.user is None
