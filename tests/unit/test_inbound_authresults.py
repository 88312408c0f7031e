"""The Authentication-Results field (server/inbound/authresults.py, RFC 8601): how ours is
written, and that forged ones claiming our authserv-id are removed, in any spelling."""

from __future__ import annotations

import authres
import pytest

from server.inbound import authresults, headers
from server.inbound.authresults import Result

OURS = "mail.example.test"
BODY = b"From: a@sender.test\r\nSubject: hi\r\n\r\nAuthentication-Results: mail.example.test; x\r\n"


def test_build_one_field_folded_per_result():
    field = authresults.build(OURS, [
        Result("spf", "pass", (("smtp.mailfrom", "sender.test"),)),
        Result("dkim", "fail", (("header.d", "sender.test"), ("header.b", "ab/cd+EF")),
               reason="body hash did not verify"),
        Result("dmarc", "fail", (("header.from", "sender.test"),), reason="not aligned",
               comment="p=reject sp=reject pct=100 dis=reject"),
        Result("arc", "none"),
    ])
    assert field == (
        b"Authentication-Results: mail.example.test;\r\n"
        b"\tspf=pass smtp.mailfrom=sender.test;\r\n"
        b'\tdkim=fail reason="body hash did not verify" header.d=sender.test '
        b'header.b="ab/cd+EF";\r\n'
        b"\tdmarc=fail (p=reject sp=reject pct=100 dis=reject) reason=\"not aligned\" "
        b"header.from=sender.test;\r\n"
        b"\tarc=none\r\n")


def test_build_parses_with_authres():
    """dkimpy's ARC signer reads our field back through authres: it must parse."""
    field = authresults.build(OURS, [
        Result("spf", "softfail", (("smtp.mailfrom", "sender.test"),),
               reason='domain owner "discourages" (this)'),
        Result("dkim", "pass", (("header.d", "sender.test"), ("header.b", "a=b/c+d="))),
    ])
    parsed = authres.AuthenticationResultsHeader.parse(field.decode().replace("\r\n", ""))
    assert parsed.authserv_id == OURS
    assert [(r.method, r.result) for r in parsed.results] == [("spf", "softfail"),
                                                              ("dkim", "pass")]
    # authres keeps the quoted-pairs' backslashes; what matters is that the field parses.
    assert parsed.results[0].reason.replace("\\", "") == 'domain owner "discourages" (this)'


def test_no_results_is_none():
    assert authresults.build(OURS, []) == b"Authentication-Results: mail.example.test; none\r\n"


@pytest.mark.parametrize(("text", "quoted"), [
    ("sender.test", "sender.test"),
    ("a b", '"a b"'),
    ("ab/c+d==", '"ab/c+d=="'),
    ('say "hi" \\ bye', '"say \\"hi\\" \\\\ bye"'),
    ("tab\there\r\nnewline", '"tab?here??newline"'),  # controls never reach the header
    ("é", '"?"'),
    ("", '""'),
])
def test_quote_value(text, quoted):
    assert authresults.quote_value(text) == quoted


def test_long_reason_is_cut():
    field = authresults.build(OURS, [Result("spf", "permerror", reason="x" * 5000)])
    assert max(len(line) for line in field.split(b"\r\n")) < 250


@pytest.mark.parametrize("value", [
    b"mail.example.test; spf=pass smtp.mailfrom=evil.test",
    b"MAIL.Example.TEST; dkim=pass",
    b"mail.example.test.; dmarc=pass",
    b" (a comment (nested)) mail.example.test 1; spf=pass",
    b'"mail.example.test"; spf=pass',
    b"mail.example.test;none",
    b"mail.example.test",
])
def test_authserv_id_of_forgeries(value):
    assert authresults.authserv_id(value) == OURS


@pytest.mark.parametrize(("value", "ident"), [
    (b"mx.google.com; spf=pass", "mx.google.com"),
    (b"mail.example.test.evil.test; spf=pass", "mail.example.test.evil.test"),
    (b"evil-mail.example.test; spf=pass", "evil-mail.example.test"),
    (b"", ""),
])
def test_authserv_id_of_others(value, ident):
    assert authresults.authserv_id(value) == ident


def test_strip_ours_keeps_other_admds_and_the_body():
    msg = (b"Received: from a by b; Wed, 15 Jan 2025 10:00:00 +0000\r\n"
           b"Authentication-Results: MAIL.EXAMPLE.TEST;\r\n\tdkim=pass header.d=bank.test\r\n"
           b"Authentication-Results: mx.remote.test; spf=fail\r\n"
           b"authentication-results:mail.example.test; dmarc=pass\r\n"
           b"Authentication-Results: (forged) mail.example.test 1;\r\n spf=pass\r\n"
           + BODY)
    stripped, removed = authresults.strip_ours(msg, OURS)
    assert removed == 3
    assert stripped == (b"Received: from a by b; Wed, 15 Jan 2025 10:00:00 +0000\r\n"
                        b"Authentication-Results: mx.remote.test; spf=fail\r\n" + BODY)


def test_strip_ours_returns_the_same_message_when_nothing_is_forged():
    msg = b"Authentication-Results: mx.remote.test; spf=fail\r\n" + BODY
    stripped, removed = authresults.strip_ours(msg, OURS)
    assert removed == 0 and stripped is msg


def test_header_split_is_byte_exact():
    msg = b"A: 1\r\n  folded\r\nB: 2\r\n\r\nbody\r\nC: not a header\r\n"
    fields, rest = headers.split(msg)
    assert fields == [b"A: 1\r\n  folded\r\n", b"B: 2\r\n"]
    assert b"".join(fields) + rest == msg
    assert headers.value_of(fields[0]) == b"1  folded"


@pytest.mark.parametrize(("value", "domains"), [
    (b"Alice <alice@Sender.TEST>", ["sender.test"]),
    (b"a@one.test, b@two.test", ["one.test", "two.test"]),
    (b'"bob@bank.test" <bob@evil.test>', ["evil.test"]),
    # Encoded words stay encoded: decoding first would make the comma a separator.
    (b"=?utf-8?q?x=40bank.test=2C?= <a@evil.test>", ["evil.test"]),
    (b"undisclosed", [""]),
    ("Jörg <jörg@bücher.test>".encode(), ["bücher.test"]),
])
def test_address_domains(value, domains):
    assert headers.address_domains(value) == domains
