"""server.imap.search: every SEARCH key, nesting, lazy loading, decoding, dates, charsets."""

from __future__ import annotations

import datetime as dt

import pytest

from server.imap.parser import SearchKey, SequenceSet
from server.imap.search import Candidate, fold, matches, needs_content, search


def K(name: str, *args) -> SearchKey:
    return SearchKey(name, args)


def AND(*keys) -> SearchKey:
    return SearchKey("AND", keys)


CET = dt.timezone(dt.timedelta(hours=2))

MESSAGE = (
    b"Date: Tue, 02 Jan 2024 00:30:00 +0200\r\n"
    b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@example.de>\r\n"
    b"To: Alice <alice@example.com>, bob@example.org\r\n"
    b"Cc: Carol <carol@example.net>\r\n"
    b"Bcc: dave@example.net\r\n"
    b"Subject: =?iso-8859-1?q?Gr=FC=DFe_aus?=\r\n =?utf-8?b?U3RyYcOfZQ==?= und mehr\r\n"
    b"X-Mailer: Thing/1.0\r\n"
    b"X-Empty:\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n"
    b"\r\n"
    b"preamble not searched? it is not a part\r\n"
    b"--b\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Sch=F6ne Gr=FC=DFe, the qu=\r\nick brown fox\r\n"
    b"--b\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"PHA+Y2Fmw6kgbGF0dGU8L3A+\r\n"  # <p>café latte</p>
    b"--b\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"c2VjcmV0IGF0dGFjaG1lbnQ=\r\n"  # "secret attachment": not text, not searched
    b"--b\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: forwarded =?utf-8?q?Nachricht?=\r\n"
    b"\r\n"
    b"inner words\r\n"
    b"--b--\r\n")


class Loader:
    def __init__(self, data: bytes):
        self.data = data
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.data


def cand(message: bytes = MESSAGE, *, seq: int = 1, uid: int = 10, flags=(), keywords=(),
         size: int = 1000, internal_date=None, modseq: int = 5, recent: bool = False):
    return Candidate(
        seq=seq, uid=uid, flags=frozenset(flags), keywords=frozenset(keywords), size=size,
        internal_date=internal_date or dt.datetime(2024, 1, 2, 0, 30, tzinfo=CET),
        modseq=modseq, recent=recent, load=Loader(message))


def hit(key, c=None, largest_seq: int = 3, largest_uid: int = 30) -> bool:
    return matches(key, c or cand(), largest_seq=largest_seq, largest_uid=largest_uid)


# --- keys answered from the index ---


@pytest.mark.parametrize(
    ("name", "flag"),
    [("ANSWERED", "\\Answered"), ("DELETED", "\\Deleted"), ("DRAFT", "\\Draft"),
     ("FLAGGED", "\\Flagged"), ("SEEN", "\\Seen")],
)
def test_flag_keys_and_their_negations(name, flag):
    assert hit(K(name), cand(flags={flag}))
    assert not hit(K(name), cand())
    assert hit(K("UN" + name), cand())
    assert not hit(K("UN" + name), cand(flags={flag}))
    assert hit(K(name), cand(flags={flag.upper()}))  # RFC 3501 §2.3.2: any case


def test_all():
    assert hit(K("ALL"))


@pytest.mark.parametrize(
    ("recent", "flags", "new", "old"),
    [(True, (), True, False), (True, ("\\Seen",), False, False), (False, (), False, True),
     (False, ("\\Seen",), False, True)],
)
def test_recent_new_old(recent, flags, new, old):
    c = cand(recent=recent, flags=flags)
    assert hit(K("RECENT"), c) == recent
    assert hit(K("NEW"), c) == new  # RFC 3501: NEW = (RECENT UNSEEN)
    assert hit(K("OLD"), c) == old  # OLD = NOT RECENT


def test_keywords_case_insensitive():
    c = cand(keywords={"$Forwarded", "Work"})
    assert hit(K("KEYWORD", "$forwarded"), c)
    assert hit(K("KEYWORD", "WORK"), c)
    assert not hit(K("KEYWORD", "$Junk"), c)
    assert hit(K("UNKEYWORD", "$Junk"), c)
    assert not hit(K("UNKEYWORD", "work"), c)


@pytest.mark.parametrize(("size", "larger", "smaller"), [(999, False, True), (1000, False, False),
                                                        (1001, True, False)])
def test_larger_and_smaller_are_strict(size, larger, smaller):
    assert hit(K("LARGER", 1000), cand(size=size)) == larger
    assert hit(K("SMALLER", 1000), cand(size=size)) == smaller


def test_modseq_is_equal_or_greater():
    # RFC 7162 §3.4
    assert hit(K("MODSEQ", 5), cand(modseq=5))
    assert hit(K("MODSEQ", 4), cand(modseq=5))
    assert not hit(K("MODSEQ", 6), cand(modseq=5))


def test_sequence_and_uid_sets_with_star():
    star = SequenceSet(((None, None),))
    assert hit(K("SEQSET", star), cand(seq=3), largest_seq=3)
    assert not hit(K("SEQSET", star), cand(seq=2), largest_seq=3)
    assert hit(K("SEQSET", SequenceSet(((2, None),))), cand(seq=2), largest_seq=3)
    assert hit(K("UID", SequenceSet(((25, None),))), cand(uid=30), largest_uid=30)
    assert not hit(K("UID", SequenceSet(((1, 9),))), cand(uid=10))
    # "*" is the largest UID, not the largest sequence number
    assert hit(K("UID", star), cand(seq=1, uid=30), largest_seq=3, largest_uid=30)


@pytest.mark.parametrize(
    ("when", "before", "on", "since"),
    [
        (dt.date(2024, 1, 2), False, True, True),
        (dt.date(2024, 1, 3), True, False, False),
        (dt.date(2024, 1, 1), False, False, True),
    ],
)
def test_internaldate_keys_use_the_date_disregarding_time_and_zone(when, before, on, since):
    # 2024-01-02 00:30 +02:00 is 2024-01-01 in UTC; RFC 3501 says to disregard time and
    # timezone, so it is the 2nd, as the client sees it in INTERNALDATE.
    c = cand()
    assert hit(K("BEFORE", when), c) == before
    assert hit(K("ON", when), c) == on
    assert hit(K("SINCE", when), c) == since


def test_internaldate_naive_datetime():
    c = cand(internal_date=dt.datetime(2024, 5, 1, 23, 59))
    assert hit(K("ON", dt.date(2024, 5, 1)), c)


# --- keys that read the message ---


@pytest.mark.parametrize(
    ("date_field", "day"),
    [
        (b"Tue, 02 Jan 2024 00:30:00 +0200", dt.date(2024, 1, 2)),  # not the UTC date
        (b"2 Jan 2024 23:59 -1200", dt.date(2024, 1, 2)),
        (b"Wed, 2 Jan 24 10:00:00 GMT", dt.date(2024, 1, 2)),  # 2-digit year; wrong weekday
        (b"Tue,  2 Jan 2024 10:00:00 +0000 (UTC)", dt.date(2024, 1, 2)),
    ],
)
def test_sent_keys_use_the_date_field_as_written(date_field, day):
    c = cand(b"Date: " + date_field + b"\r\n\r\nbody")
    assert hit(K("SENTON", day), c)
    assert hit(K("SENTSINCE", day), c) and not hit(K("SENTBEFORE", day), c)
    assert hit(K("SENTBEFORE", day + dt.timedelta(days=1)), c)
    assert not hit(K("SENTSINCE", day + dt.timedelta(days=1)), c)


@pytest.mark.parametrize("message", [b"Subject: no date\r\n\r\nx", b"Date: yesterday\r\n\r\nx",
                                     b"Date: 31 Feb 2024 10:00 +0000\r\n\r\nx", b"Date:\r\n\r\n"])
def test_sent_keys_never_match_without_a_valid_date(message):
    c = cand(message)
    for name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        assert not hit(K(name, dt.date(2024, 1, 2)), c)
    assert hit(K("NOT", K("SENTON", dt.date(2024, 1, 2))), c)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("FROM", "jörg", True),  # display name, RFC 2047-decoded
        ("FROM", "JÖRG MÜLLER", True),  # Unicode case folding
        ("FROM", "joerg@example.de", True),
        ("FROM", "=?utf-8", False),  # the encoded form is not what is searched
        ("FROM", "alice", False),
        ("TO", "Alice", True),
        ("TO", "bob@EXAMPLE.org", True),
        ("TO", "carol", False),
        ("CC", "carol@example.net", True),
        ("BCC", "dave", True),
        ("SUBJECT", "grüße aus", True),  # ISO-8859-1 encoded word
        ("SUBJECT", "GRÜSSE AUS", True),  # casefold: ß matches ss
        ("SUBJECT", "ausstraße", True),  # whitespace between encoded words is dropped
        ("SUBJECT", "straße und mehr", True),  # folded line unfolded
        ("SUBJECT", "forwarded", False),  # the encapsulated message's subject is not ours
    ],
)
def test_header_string_keys(name, text, expected):
    assert hit(K(name, text.encode("utf-8"))) == expected


def test_header_key():
    assert hit(K("HEADER", "X-MAILER", b"thing/1"))  # the parser upper-cases the name
    assert hit(K("HEADER", "x-mailer", b"THING"))
    assert not hit(K("HEADER", "X-Mailer", b"other"))
    assert hit(K("HEADER", "SUBJECT", "grüße".encode()))  # decoded like SUBJECT
    assert not hit(K("HEADER", "X-Missing", b"x"))


def test_header_with_empty_value_matches_any_message_with_the_field():
    # RFC 9051 §6.4.4 (and RFC 3501 implementations): HEADER <field> "" = has the field
    assert hit(K("HEADER", "X-MAILER", b""))
    assert hit(K("HEADER", "X-Empty", b""))  # even with an empty value
    assert not hit(K("HEADER", "X-Missing", b""))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("schöne grüße", True),  # quoted-printable, ISO-8859-1
        ("quick brown", True),  # QP soft line break joined
        ("café latte", True),  # base64, UTF-8, in the HTML part
        ("cafe\u0301", True),  # decomposed é matches precomposed (NFKD)
        ("secret attachment", False),  # not a text part
        ("c2VjcmV0", False),  # nor its encoded form
        ("inner words", True),  # an encapsulated message's body is body text
        ("forwarded nachricht", True),  # and so is its header, decoded
        ("preamble", False),  # the preamble is not a part (RFC 2046 §5.1.1)
        ("alice@example.com", False),  # BODY does not look at the header
    ],
)
def test_body(text, expected):
    assert hit(K("BODY", text.encode("utf-8"))) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("alice@example.com", True), ("thing/1.0", True), ("grüße aus", True),
     ("schöne", True), ("quick brown", True), ("not anywhere", False)],
)
def test_text_matches_header_or_body(text, expected):
    assert hit(K("TEXT", text.encode("utf-8"))) == expected


def test_plain_message_without_mime_headers():
    c = cand(b"Subject: plain\r\n\r\nJust some 8-bit text: na\xc3\xafve\r\n")
    assert hit(K("BODY", "NAÏVE".encode()), c)
    latin1 = cand(b"Subject: plain\r\n\r\nna\xefve\r\n")  # undeclared legacy 8-bit
    assert hit(K("BODY", "naïve".encode()), latin1)


def test_raw_eight_bit_headers():
    c = cand("Subject: Ärger im Büro\r\nFrom: Zoë <z@x>\r\n\r\n".encode())
    assert hit(K("SUBJECT", "ärger".encode()), c)
    assert hit(K("FROM", "ZOË".encode()), c)


def test_broken_content_never_raises():
    broken = (b"Subject: =?bogus-charset?q?x=ZZ?= =?utf-8?b?!!!?=\r\n"
              b"Content-Type: text/plain; charset=punycode\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\n%%%not base64\r\n")
    c = cand(broken)
    assert not hit(K("BODY", b"zzz"), c)
    assert hit(K("SUBJECT", b"x"), c)
    assert not hit(K("TEXT", b"nothing"), cand(b"\x00\xff\xfe"))


def test_fold():
    assert fold("ABC") == "abc"
    assert fold("Straße") == fold("STRASSE")
    assert fold("é") == fold("e\u0301")


# --- combinations ---


def test_and_or_not_nesting():
    c = cand(flags={"\\Seen"}, size=500)
    assert hit(AND(K("SEEN"), K("SMALLER", 600), K("FROM", b"joerg")), c)
    assert not hit(AND(K("SEEN"), K("LARGER", 600)), c)
    assert hit(K("OR", K("LARGER", 600), K("SUBJECT", b"gr\xc3\xbc\xc3\x9fe")), c)
    assert not hit(K("OR", K("LARGER", 600), K("UNSEEN")), c)
    assert hit(K("NOT", K("OR", K("DELETED"), K("DRAFT"))), c)
    assert hit(AND(AND(K("NOT", K("NOT", K("SEEN")))), K("ALL")), c)
    assert hit(AND(), c)  # an empty AND is true


def test_unknown_key_is_an_error():
    with pytest.raises(ValueError):
        hit(K("XYZZY"))


# --- lazy loading ---


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (K("SEEN"), False), (K("UID", SequenceSet(((1, 5),))), False),
        (K("ON", dt.date(2024, 1, 1)), False), (K("KEYWORD", "x"), False),
        (K("SENTON", dt.date(2024, 1, 1)), True), (K("FROM", b"x"), True),
        (K("HEADER", "X", b""), True), (K("BODY", b"x"), True), (K("TEXT", b"x"), True),
        (K("NOT", K("OR", K("SEEN"), K("SUBJECT", b"x"))), True),
        (AND(K("SEEN"), AND(K("DRAFT"))), False),
    ],
)
def test_needs_content(key, expected):
    assert needs_content(key) == expected


def test_index_keys_never_load():
    c = cand(flags={"\\Seen"})
    key = AND(K("SEEN"), K("LARGER", 1), K("SINCE", dt.date(2020, 1, 1)), K("MODSEQ", 1),
              K("UID", SequenceSet(((1, None),))), K("NOT", K("DELETED")))
    assert hit(key, c)
    assert c.load.calls == 0


def test_content_is_loaded_once_for_many_keys():
    c = cand()
    key = AND(K("FROM", b"joerg"), K("SUBJECT", b"aus"), K("BODY", b"latte"),
              K("TEXT", b"alice"), K("HEADER", "X-Mailer", b""), K("SENTON", dt.date(2024, 1, 2)),
              K("OR", K("BODY", b"nope"), K("TEXT", b"fox")))
    assert hit(key, c)
    assert c.load.calls == 1


def test_cheap_keys_are_tried_first_in_and_and_or():
    # The content key comes first as written, but the index answers first.
    unseen = cand()
    assert not hit(AND(K("BODY", b"latte"), K("SEEN")), unseen)
    assert unseen.load.calls == 0
    seen = cand(flags={"\\Seen"})
    assert hit(K("OR", K("BODY", b"latte"), K("SEEN")), seen)
    assert seen.load.calls == 0


def test_search_loads_each_candidate_at_most_once_and_keeps_order():
    candidates = [cand(seq=i, uid=10 * i, flags={"\\Seen"} if i % 2 else ()) for i in (1, 2, 3)]
    candidates[2] = cand(b"Subject: other\r\n\r\nnothing", seq=3, uid=30, flags={"\\Seen"})
    key = AND(K("SEEN"), K("BODY", b"latte"), K("SUBJECT", b"aus"))
    found = search(key, candidates, largest_seq=3, largest_uid=30)
    assert found == [candidates[0]]
    assert [c.load.calls for c in candidates] == [1, 0, 1]
    assert search(K("ALL"), candidates, largest_seq=3, largest_uid=30) == candidates


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        (b' CHARSET UTF-8 FROM "j\xc3\xb6rg" SUBJECT "GR\xc3\x9cSSE"', True),
        (b" OR SEEN BODY latte NOT DELETED 1:* UID 5:*", True),
        (b' HEADER X-Mailer "" SENTON 2-Jan-2024 ON 2-Jan-2024 MODSEQ 5', True),
        (b" (UNSEEN TEXT fox) NOT BODY latte", False),
    ],
)
def test_criteria_from_the_real_parser(criteria, expected):
    from server.imap.grammar.search import parse_search

    parsed, rest = parse_search(memoryview(criteria))
    assert not rest
    c = cand()
    assert (search(parsed.key, [c], largest_seq=3, largest_uid=30) == [c]) == expected
    assert c.load.calls == 1
