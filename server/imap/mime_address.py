"""ENVELOPE (RFC 3501 §7.4.2, RFC 9051 §7.5.2): header fields and address lists as IMAP data.

Strings are the raw header values, unfolded and not RFC 2047-decoded: clients decode them
themselves, as they do for every server. Address lists are parsed by a small lenient parser
for RFC 5322 §3.4 (plus the obsolete route syntax of §4.4) that never fails: whatever is not
an address degrades into one with placeholder parts, the way Dovecot does it. The stdlib
parser (``email._header_value_parser``) is both private and about 20 times slower, and a
first FETCH ENVELOPE of a large mailbox pays this once per message.
"""

from __future__ import annotations

import re

from server.imap.encode import Raw, nstring, string
from server.imap.mime_header import body_offset, first_values

# RFC 3501 §7.4.2 gives a NIL host a meaning (group syntax), so a missing part of a broken
# address must be a string. Dovecot's placeholders; some clients know them by name.
MISSING_MAILBOX = b"MISSING_MAILBOX"
MISSING_DOMAIN = b"MISSING_DOMAIN"

_ENVELOPE_FIELDS = frozenset(
    ("date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc", "in-reply-to",
     "message-id"))

# Tokens of RFC 5322 §3.2, read from a latin-1 view so every byte survives the round trip.
_TOKENS = re.compile(
    r'''(?P<ws>[ \t]+)'''
    r'''|(?P<q>"(?:\\.|[^"\\])*(?:"|\\?$))'''  # unterminated quoted string: runs to the end
    r'''|(?P<c>\()'''
    r'''|(?P<l>\[(?:\\.|[^\]\\])*(?:\]|\\?$))'''
    r'''|(?P<s>[<>@,;:\\)\]])'''
    r'''|(?P<a>[^ \t"(\[<>@,;:\\)\]]+)''',
    re.S,
)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
# Blanks are SP and HTAB only: this text is latin-1 decoded UTF-8 (or anything), where
# str.split() would also cut at 0xA0 and 0x85, which are bytes inside UTF-8 characters.
_BLANKS = re.compile(r"[ \t]+")

# Token kinds: "a" atom (dots included, as in Dovecot's atom-or-dot), "q" quoted-string
# (unquoted text), "l" domain literal, "c" comment (inner text); specials are themselves.
_WORD = ("a", "q")


def _tokenize(value: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos, n = 0, len(value)
    while pos < n:
        m = _TOKENS.match(value, pos)
        kind = m.lastgroup
        if kind == "c":
            depth, i = 1, m.end()
            while i < n and depth:
                ch = value[i]
                if ch == "\\":
                    i += 1
                elif ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                i += 1
            out.append(("c", value[m.end() : i - 1 if depth == 0 else i].strip(" \t")))
            pos = i
            continue
        text = m.group()
        if kind == "q":
            body = text[1:-1] if len(text) > 1 and text.endswith('"') else text[1:]
            out.append(("q", _QUOTED_PAIR.sub(r"\1", body) if "\\" in body else body))
        elif kind == "s":
            out.append((text, text))
        elif kind != "ws":
            out.append((kind, text))
        pos = m.end()
    return out


def _b(text: str) -> bytes:
    # Back to the original bytes; NUL is not allowed in IMAP strings (RFC 3501 §4.3), so it
    # becomes 0x80 like in Dovecot's literals.
    return text.encode("latin-1").replace(b"\x00", b"\x80")


def _phrase(tokens: list[tuple[str, str]]) -> bytes | None:
    words = [text for kind, text in tokens if kind in _WORD]
    return _b(" ".join(words)) if words else None


def _join(tokens: list[tuple[str, str]]) -> str:
    return "".join(text for kind, text in tokens if kind in ("a", "q", "l"))


def _addr_spec(tokens: list[tuple[str, str]]) -> tuple[bytes, bytes]:
    """``(mailbox, host)`` from ``local-part "@" domain``, placeholders for what is missing."""
    at = next((i for i, (kind, _) in enumerate(tokens) if kind == "@"), None)
    if at is None:
        words = [text for kind, text in tokens if kind in ("a", "q", "l")]
        local, domain = " ".join(words), ""
    else:
        local, domain = _join(tokens[:at]), _join(tokens[at + 1 :])
    return _b(local) if local else MISSING_MAILBOX, _b(domain) if domain else MISSING_DOMAIN


def _mailbox(tokens: list[tuple[str, str]]) -> list | None:
    """One ``[name, adl, mailbox, host]`` from the tokens of a name-addr or addr-spec."""
    if not any(kind != "c" for kind, _ in tokens):
        return None
    lt = next((i for i, (kind, _) in enumerate(tokens) if kind == "<"), None)
    comment = next((text for kind, text in tokens if kind == "c" and text), None)
    if lt is None:
        # RFC 5322 §3.4 (obs): "user@domain (Real Name)"; Dovecot uses the comment as name.
        mailbox, host = _addr_spec(tokens)
        return [_b(comment) if comment else None, None, mailbox, host]
    gt = next((i for i in range(lt + 1, len(tokens)) if tokens[i][0] == ">"), len(tokens))
    name = _phrase(tokens[:lt])
    inner = [t for t in tokens[lt + 1 : gt] if t[0] != "c"]
    route = None
    if inner and inner[0][0] == "@":
        # RFC 5322 §4.4 obs-route: "<@a,@b:user@host>"; the adl is "@a,@b" (RFC 3501 §7.4.2).
        colon = next((i for i, (kind, _) in enumerate(inner) if kind == ":"), None)
        if colon is not None:
            hops = [text for kind, text in inner[:colon] if kind in ("a", "l")]
            route = _b(",".join("@" + hop for hop in hops)) if hops else None
            inner = inner[colon + 1 :]
    if not inner:
        return [name, route, MISSING_MAILBOX, MISSING_DOMAIN]
    mailbox, host = _addr_spec(inner)
    if name is None and comment:
        name = _b(comment)
    return [name, route, mailbox, host]


def _is_group_start(tokens: list[tuple[str, str]], i: int) -> int | None:
    """Index of the ``:`` when a group's display-name starts at ``i``."""
    j, words = i, 0
    while j < len(tokens):
        kind = tokens[j][0]
        if kind == ":":
            return j if words else None
        if kind in _WORD:
            words += 1
        elif kind != "c":
            return None
        j += 1
    return None


# The common shapes, ``a@b``, ``Name <a@b>`` and ``"Name" <a@b>``, comma-separated, read by
# one regex; anything else (comments, groups, routes, literals, junk) goes to the parser.
_ATEXT = r"""[^ \t<>@",;:()\[\]\\]+"""
_PHRASE = r"""[^ \t"<>@,;:()\[\]\\][^"<>@,;:()\[\]\\]*?"""
_SIMPLE = re.compile(
    rf"""[ \t]*(?:"(?P<q>(?:[^"\\]|\\.)*)"[ \t]*<(?P<l1>{_ATEXT})@(?P<d1>{_ATEXT})>"""
    rf"""|(?P<n>{_PHRASE})?[ \t]*<(?P<l2>{_ATEXT})@(?P<d2>{_ATEXT})>"""
    rf"""|(?P<l3>{_ATEXT})@(?P<d3>{_ATEXT}))[ \t]*(?:,[ \t]*|$)""",
    re.S,
)


def _simple_list(value: str) -> list[list] | None:
    out: list[list] = []
    pos, n = 0, len(value)
    while pos < n:
        m = _SIMPLE.match(value, pos)
        if m is None:
            return None
        q, name, local = m.group("q"), m.group("n"), m.group("l3")
        if local is not None:
            out.append([None, None, _b(local), _b(m.group("d3"))])
        elif q is not None:
            q = _QUOTED_PAIR.sub(r"\1", q) if "\\" in q else q
            out.append([_b(q), None, _b(m.group("l1")), _b(m.group("d1"))])
        else:
            # Like the parser: the words of a phrase joined by one space.
            out.append([_b(_BLANKS.sub(" ", name.strip(" \t"))) if name else None, None,
                        _b(m.group("l2")), _b(m.group("d2"))])
        pos = m.end()
    return out


def address_list(value: bytes | None) -> list[list] | None:
    """RFC 3501 §7.4.2 address structures, groups as start/end markers; None when empty."""
    if value is None:
        return None
    text = value.decode("latin-1")
    simple = _simple_list(text)
    if simple is not None:
        return simple or None
    return _parse_list(text) or None


def _parse_list(text: str) -> list[list]:
    tokens = _tokenize(text)
    out: list[list] = []
    i, n = 0, len(tokens)
    group_open = False
    while i < n:
        kind = tokens[i][0]
        if kind == ",":
            i += 1
            continue
        if kind == ";":
            if group_open:
                out.append([None, None, None, None])
                group_open = False
            i += 1
            continue
        colon = None if group_open else _is_group_start(tokens, i)
        if colon is not None:
            # RFC 5322 §3.4 group: display-name ":" [group-list] ";"
            out.append([None, None, _phrase(tokens[i:colon]) or b"", None])
            group_open = True
            i = colon + 1
            continue
        j, in_angle = i, False
        while j < n:
            kind = tokens[j][0]
            if kind == "<":
                in_angle = True
            elif kind == ">":
                in_angle = False
            elif kind in (",", ";") and not in_angle:
                break
            j += 1
        # A stray colon inside an address (not a group) is junk that _mailbox skips.
        address = _mailbox(tokens[i:j])
        if address is not None:
            out.append(address)
        i = j
    if group_open:
        out.append([None, None, None, None])  # an unterminated group still ends
    return out


def _string(value: bytes | None) -> bytes | None:
    return None if value is None else value.replace(b"\x00", b"\x80")


def _adjacent(addresses: list[list] | None) -> Raw | None:
    # RFC 3501 §9: env-from = "(" 1*address ")" -- the addresses follow each other without
    # a space, as in the RFC's examples, which an encode.py list (SP-separated) cannot say.
    if not addresses:
        return None
    # Each address is four nstrings; spelled out, as this runs for every address of a
    # first FETCH ENVELOPE.
    return Raw(b"(" + b"".join(
        b"(" + nstring(a[0]) + b" " + nstring(a[1]) + b" " + nstring(a[2]) + b" "
        + nstring(a[3]) + b")" for a in addresses) + b")")


# Encoded address lists by the field value they came from.  In a mailbox the same few
# values come back again and again (To: is mostly its owner, From: a few hundred
# correspondents), and parsing and encoding them is half of a first ENVELOPE's cost.
_ENCODED: dict[bytes, Raw | None] = {}
_ENCODED_MAX = 4096


def envelope(header: bytes) -> list:
    """``[date, subject, from, sender, reply-to, to, cc, bcc, in-reply-to, message-id]``.

    ``header`` may be the whole message; only the part before the blank line is read.
    The first occurrence of each field counts. Address lists are ``Raw`` (see ``_adjacent``);
    ``address_list`` gives them as Python lists. RFC 3501 §7.4.2: a missing or empty Sender
    or Reply-To takes the value of From.
    """
    values = first_values(header[: body_offset(header)], _ENVELOPE_FIELDS)

    def addresses(name: str) -> Raw | None:
        value = values.get(name)
        if value is None:
            return None
        encoded = _ENCODED.get(value, _ENCODED)
        if encoded is _ENCODED:
            encoded = _adjacent(address_list(value))
            if len(_ENCODED) >= _ENCODED_MAX:
                _ENCODED.clear()
            _ENCODED[value] = encoded
        return encoded

    sender_from = addresses("from")
    return [
        _string(values.get("date")),
        _string(values.get("subject")),
        sender_from,
        addresses("sender") or sender_from,
        addresses("reply-to") or sender_from,
        addresses("to"),
        addresses("cc"),
        addresses("bcc"),
        _string(values.get("in-reply-to")),
        _string(values.get("message-id")),
    ]


def envelope_bytes(header: bytes) -> bytes:
    """``encode(envelope(header))``, spelled out for the one shape it has: a client's first
    FETCH ENVELOPE of a big folder makes 100,000 of these."""
    parts = [b"NIL" if v is None else v if isinstance(v, Raw) else string(v)
             for v in envelope(header)]
    return b"(" + b" ".join(parts) + b")"
