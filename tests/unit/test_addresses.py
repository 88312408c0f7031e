"""server.addresses: RFC 5321 Mailbox parsing, normalisation, plus-tags and mailbox names."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from server.addresses import (
    MAX_DOMAIN,
    MAX_LOCAL_PART,
    MAX_PATH,
    Address,
    AddressError,
    normalize_domain,
    parse_address,
    parse_path,
    quote_local,
    split_tag,
    validate_mailbox_local,
)

# --- domains ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.c0.example", "a-b.c0.example"),
        ("localhost", "localhost"),
    ],
)
def test_normalize_domain(text, expected):
    assert normalize_domain(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", ".", "example..com", ".example.com", "-a.example", "a-.example", "a_b.example",
     "a b.example", "1.2.3.4", "example.123", "a" * 64 + ".example", "ex@mple.com"],
)
def test_normalize_domain_rejects(text):
    with pytest.raises(AddressError):
        normalize_domain(text)


def test_domain_length_limit():
    # RFC 5321 §4.5.3.1.2: 255 octets
    name = ".".join(["a" * 63] * 4)
    assert len(name) == MAX_DOMAIN
    assert normalize_domain(name) == name
    assert normalize_domain(name + ".") == name  # the trailing dot does not count
    with pytest.raises(AddressError, match="longer than 255"):
        normalize_domain("b" + name)


@pytest.mark.parametrize("text", ["exa\n.example", "exa\r.example", "mail\n.example.com"])
def test_domain_with_line_break_inside_rejected(text):
    # A label must be [a-z0-9-] only: a line break inside a host name ends up in greetings and
    # trace headers. ("$" in a regex also matches before a final newline.)
    with pytest.raises(AddressError):
        normalize_domain(text)
    with pytest.raises(AddressError):
        parse_address(f"alice@{text}")


# --- literals ---


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("a@[127.0.0.1]", "[127.0.0.1]"),
        ("a@[IPv6:::1]", "[IPv6:::1]"),
        ("a@[ipv6:0:0:0:0:0:0:0:1]", "[IPv6:::1]"),
        ("a@[IPv6:2001:DB8::1]", "[IPv6:2001:db8::1]"),
    ],
)
def test_address_literal(text, domain):
    addr = parse_address(text)
    assert addr.domain == domain
    assert addr.is_literal
    assert str(addr) == f"a@{domain}"


@pytest.mark.parametrize(
    "text",
    ["a@[::1]", "a@[1.2.3]", "a@[256.1.1.1]", "a@[IPv6:1.2.3.4]", "a@[IPv6:::g]", "a@[]",
     "a@[127.0.0.1", "a@[example.com]", "a@[127.0.0.1]x"],
)
def test_invalid_literal(text):
    with pytest.raises(AddressError):
        parse_address(text)


def test_domain_is_not_a_literal():
    assert not parse_address("a@example.com").is_literal


# --- local parts ---


def test_parse_simple():
    addr = parse_address("Alice.Smith@Example.COM.")
    assert addr == Address("Alice.Smith", "example.com")
    assert addr.key == "alice.smith@example.com"
    assert str(addr) == "Alice.Smith@example.com"


def test_atext_specials_allowed():
    local = "!#$%&'*+-/=?^_`{|}~"
    assert parse_address(f"{local}@example.com").local == local


def test_utf8_local_part():
    addr = parse_address("Jösé@bücher.example")
    assert addr == Address("Jösé", "xn--bcher-kva.example")
    assert addr.key == "jösé@xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("text", "local", "canonical"),
    [
        ('"john doe"@example.com', "john doe", '"john doe"@example.com'),
        ('"a\\"b"@example.com', 'a"b', '"a\\"b"@example.com'),
        ('"a\\\\b"@example.com', "a\\b", '"a\\\\b"@example.com'),
        ('"\\a\\b"@example.com', "ab", "ab@example.com"),  # needless escapes dropped
        ('"plain"@example.com', "plain", "plain@example.com"),  # needless quotes dropped
        ('"a..b"@example.com', "a..b", '"a..b"@example.com'),
        ('".a"@example.com', ".a", '".a"@example.com'),
        ('"x@y"@example.com', "x@y", '"x@y"@example.com'),
        ('"(c)"@[127.0.0.1]', "(c)", '"(c)"@[127.0.0.1]'),
    ],
)
def test_quoted_local_part(text, local, canonical):
    addr = parse_address(text)
    assert addr.local == local
    assert str(addr) == canonical
    assert parse_address(canonical) == addr


@pytest.mark.parametrize(
    "text",
    ['"abc@example.com', '"a"b"@example.com', '"a\\"@example.com', '"a\tb"@example.com',
     '"a\x7fb"@example.com', '"a\\\nb"@example.com', '""@example.com'],
)
def test_bad_quoted_local_part(text):
    with pytest.raises(AddressError):
        parse_address(text)


@pytest.mark.parametrize(
    "text",
    ["a..b@example.com", ".a@example.com", "a.@example.com", "a b@example.com",
     "a(b)@example.com", "a,b@example.com", "a\\b@example.com", "a@b@example.com",
     "a;b@example.com", "<a>@example.com", "a\n@example.com"],
)
def test_dot_string_rules(text):
    with pytest.raises(AddressError):
        parse_address(text)


@pytest.mark.parametrize(
    "text", ["", "@", "alice", "@example.com", "alice@", "alice@.", "alice@@example.com"])
def test_not_local_at_domain(text):
    with pytest.raises(AddressError):
        parse_address(text)


def test_local_part_limit():
    # RFC 5321 §4.5.3.1.1: 64 octets
    assert parse_address("a" * MAX_LOCAL_PART + "@example.com").local == "a" * 64
    with pytest.raises(AddressError, match="local part must be 1 to 64 octets"):
        parse_address("a" * 65 + "@example.com")
    # octets, not characters: 32 two-octet characters fit, 33 do not
    assert parse_address("é" * 32 + "@example.com")
    with pytest.raises(AddressError, match="local part"):
        parse_address("é" * 33 + "@example.com")
    with pytest.raises(AddressError, match="local part"):
        parse_address('"' + "a" * 65 + '"@example.com')


def test_path_limit():
    # RFC 5321 §4.5.3.1.3: 256 octets for the path, angle brackets included.
    domain = ".".join(["d" * 63, "d" * 63, "d" * 60, "example"])  # 197 octets
    local = "a" * (MAX_PATH - 2 - len(domain) - 1)
    text = f"{local}@{domain}"
    assert len(f"<{text}>") == MAX_PATH
    assert parse_address(text).domain == domain
    with pytest.raises(AddressError, match="longer than 254"):
        parse_address("x" + text)


def test_lone_surrogate_is_an_address_error():
    # A str can hold a lone surrogate (e.g. from JSON "\ud800" in an admin request); it is not
    # an address, and must be refused like any other bad input rather than crash the caller.
    with pytest.raises(AddressError):
        parse_address("\ud800@example.com")


@pytest.mark.parametrize(
    ("local", "quoted"),
    [("alice", "alice"), ("a.b", "a.b"), ("a b", '"a b"'), ('a"b', '"a\\"b"'),
     ("a\\b", '"a\\\\b"'), ("a..b", '"a..b"'), ("", '""')],
)
def test_quote_local(local, quoted):
    assert quote_local(local) == quoted


# --- plus-tags and mailbox names ---


@pytest.mark.parametrize(
    ("local", "delimiter", "expected"),
    [
        ("bob+lists", "+", ("bob", "lists")),
        ("bob+a+b", "+", ("bob", "a+b")),
        ("bob+", "+", ("bob", "")),
        ("bob", "+", ("bob", None)),
        ("+bob", "+", ("+bob", None)),  # a leading delimiter is part of the name
        ("bob+lists", "", ("bob+lists", None)),  # plus-addressing off
        ("bob-lists", "-", ("bob", "lists")),
        ("bob+lists", "-", ("bob+lists", None)),
    ],
)
def test_split_tag(local, delimiter, expected):
    assert split_tag(local, delimiter) == expected


@pytest.mark.parametrize(
    ("local", "expected"),
    [("alice", "alice"), ("Alice.Smith", "alice.smith"), ("a_b-c", "a_b-c"), ("0day", "0day"),
     ("a" * 64, "a" * 64), ("a.b.c", "a.b.c")],
)
def test_validate_mailbox_local(local, expected):
    assert validate_mailbox_local(local) == expected


@pytest.mark.parametrize(
    "local",
    ["", "a" * 65, "../x", "a/b", ".x", "x.", "a..b", "a+b", "-a", "_a", "a b", "a@b", "é",
     "a\\b", "a\x00b", "alice\n"],
)
def test_validate_mailbox_local_rejects(local):
    with pytest.raises(AddressError, match="invalid mailbox name"):
        validate_mailbox_local(local)


# --- property: the parser only ever raises AddressError, and its output parses back ---

_LOCAL_CHARS = st.sampled_from(list("aZ09.+-_!#~'\"\\ @()[],;:<>é\x7f\x00\t"))
_DOMAIN_CHARS = st.sampled_from(list("aZ09-._ü ßİ"))
_local = st.one_of(
    st.text(_LOCAL_CHARS, max_size=70),
    st.text(_LOCAL_CHARS, max_size=68).map(lambda s: f'"{s}"'),
)
_domain = st.one_of(
    st.text(_DOMAIN_CHARS, min_size=1, max_size=80),
    st.lists(st.text(_DOMAIN_CHARS, min_size=1, max_size=12), min_size=1, max_size=25).map(
        ".".join),
    st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip.exploded}]"),
    st.text(max_size=20).map(lambda s: f"[{s}]"),
)
_addressish = st.one_of(st.text(), st.tuples(_local, _domain).map("@".join))


@given(_addressish)
@example('"a\\"b"@Example.COM.')
@example("x@[IPv6:0:0:0:0:0:0:0:1]")
@example("\u00c0@A")
# 103 octets of domain in, 247 out: the 256-octet limit must hold for the address as written back
@example("a" * 64 + "@" + "aü." * 24 + "example")
def test_parse_address_property(text):
    try:
        addr = parse_address(text)
    except AddressError:
        return
    assert parse_address(str(addr)) == addr
    assert str(parse_address(str(addr))) == str(addr)
    # Only ASCII letters are folded (fold_local): "À" and "à" may be different mailboxes.
    folded = "".join(c.lower() if c.isascii() else c for c in addr.local)
    assert addr.key == f"{folded}@{addr.domain}"


# --- IDNA 2008 and case folding ---


def test_idna_2008_keeps_sharp_s():
    # IDNA 2003 (Python's "idna" codec) maps ß to ss: a different domain.
    assert normalize_domain("straße.test") == "xn--strae-oqa.test"


def test_only_ascii_letters_fold():
    kelvin = "\u212aate@example.test"  # KELVIN SIGN, lower-cases to "k" under Unicode rules
    assert parse_address(kelvin).key != "kate@example.test"
    assert parse_address("KATE@example.test").key == "kate@example.test"


# --- SMTP paths (RFC 5321 §4.1.2) ---


@pytest.mark.parametrize(("text", "expected"), [
    ("<>", ("", "")),
    ("<Alice@Example.TEST>", ("Alice@example.test", "")),
    ("<a@b.test> SIZE=10 BODY=8BITMIME", ("a@b.test", "SIZE=10 BODY=8BITMIME")),
    ("a@b.test", ("a@b.test", "")),
    ("a@b.test SIZE=1", ("a@b.test", "SIZE=1")),
    ("<@x.test,@[192.0.2.1]:u@r.test>", ("u@r.test", "")),
    ('<"a>b c"@x.test>', ('"a>b c"@x.test', "")),
    ("<=?utf-8?q?demo?=@example.test>", ("=?utf-8?q?demo?=@example.test", "")),
])
def test_parse_path(text, expected):
    assert parse_path(text) == expected


def test_parse_path_postmaster():
    assert parse_path("<postMaster>", allow_postmaster=True) == ("Postmaster", "")
    with pytest.raises(AddressError):
        parse_path("<postmaster>")


@pytest.mark.parametrize("text", [
    "", "<", "<a@b.test", "<a@b.test>x", "<a(c)@b.test>", "<a @b.test>", "<a@ b.test>",
    "<@:u@x.test>", "<@x.test u@y.test>", "<@bad_domain:u@x.test>", "<a@b.test@c.test>",
    "<a\r\nb@x.test>",
])
def test_parse_path_rejects(text):
    with pytest.raises(AddressError):
        parse_path(text)


@given(st.text(max_size=80))
def test_parse_path_never_crashes(text):
    try:
        mailbox, _ = parse_path(text, allow_postmaster=True)
    except AddressError:
        return
    if mailbox and mailbox != "Postmaster":
        assert str(parse_address(mailbox)) == mailbox
