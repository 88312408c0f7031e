"""server.imap.mutf7: modified UTF-7 mailbox names (RFC 3501 §5.1.3)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from server.imap import mutf7

PAIRS = [
    ("INBOX", "INBOX"),
    ("", ""),
    ("&", "&-"),
    ("Tom & Jerry", "Tom &- Jerry"),
    # RFC 3501 §5.1.3's own example.
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("Gelöschte Elemente", "Gel&APY-schte Elemente"),
    ("☺!", "&Jjo-!"),
    ("☺-", "&Jjo--"),
    ("Отправленные", "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"),
    # Outside the BMP: a surrogate pair in one shift.
    ("📧 mail", "&2D3c5w- mail"),
    ("a\tb", "a&AAk-b"),
]


@pytest.mark.parametrize(("text", "wire"), PAIRS)
def test_encode(text, wire):
    assert mutf7.encode(text) == wire


@pytest.mark.parametrize(("text", "wire"), PAIRS)
def test_decode(text, wire):
    assert mutf7.decode(wire) == text


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        ("&", "not closed"),
        ("&Jjo", "not closed"),
        ("&Jj-", "whole number"),  # 12 bits: not a UTF-16 unit
        ("&J-", "whole number"),
        ("&Jj*-", "invalid character"),
        ("&Jj/-", "invalid character"),  # "/" is "," in mUTF-7
        ("&Jjp-", "padding"),  # same unit as &Jjo- with non-zero spare bits
        ("&AGE-", "printable"),  # "a" must be written as itself
        ("&ACY-", "printable"),  # "&" must be "&-"
        ("&Jjo-&Jjo-", "adjacent"),  # must be &JjomOg-
        ("&2D0-", "utf-16"),  # a lone high surrogate
        ("&3ec-", "utf-16"),  # a lone low surrogate
        ("caf\u00e9", "must be base64"),  # 8-bit: not mUTF-7
        ("a\x01b", "must be base64"),
        ("a\x7fb", "must be base64"),
    ],
)
def test_decode_is_strict(wire, why):
    with pytest.raises(ValueError) as info:
        mutf7.decode(wire)
    assert why.lower() in str(info.value).lower()


def test_adjacent_shift_written_as_one():
    assert mutf7.encode("☺☺") == "&JjomOg-"
    assert mutf7.decode("&JjomOg-") == "☺☺"


def test_encode_refuses_lone_surrogates():
    with pytest.raises(ValueError):
        mutf7.encode("bad\ud800name")


NO_SURROGATES = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))


@given(NO_SURROGATES)
@example("&&-&")
@example("\x00")
@example("\U0010ffff")
def test_round_trip(text):
    wire = mutf7.encode(text)
    assert all(" " <= ch <= "~" for ch in wire)
    assert mutf7.decode(wire) == text


@given(st.text(alphabet="&-+,AJjoBCz09 ~/", max_size=30))
def test_decode_accepts_only_canonical_spellings(wire):
    # Whatever decode accepts, encode gives back byte for byte: no mailbox has two names.
    try:
        text = mutf7.decode(wire)
    except ValueError:
        return
    assert mutf7.encode(text) == wire
