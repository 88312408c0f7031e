"""The MIME tree of a stored message (RFC 2045, RFC 2046) and BODY/BODYSTRUCTURE from it.

``parse`` finds every entity as offsets into the message bytes: one ``find`` pass per
multipart level for its boundary, no copies of bodies, so a 50 MB attachment costs a scan
and nothing else. Broken MIME degrades instead of failing: a multipart without a boundary
parameter is text (RFC 2045 §5.2), one whose boundary never appears gets a single empty
text part (as Dovecot answers), an unclosed multipart ends with the data, and nesting
deeper than ``MAX_DEPTH`` or past ``MAX_PARTS`` entities is not parsed further.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.imap import mime_header as mh
from server.imap.encode import Raw, encode
from server.imap.mime_address import envelope

# Dovecot's limits (message_parser max_nested_mime_parts / max_total_mime_parts): deep
# enough for any real message, small enough that a hostile one cannot exhaust the stack
# (the parse recurses once per level) or make us rescan it thousands of times.
MAX_DEPTH = 100
MAX_PARTS = 10_000

_CONTENT_FIELDS = frozenset(
    ("content-type", "content-transfer-encoding", "content-id", "content-description",
     "content-md5", "content-disposition", "content-language", "content-location"))

# RFC 2045 §5.2 default; RFC 2046 §5.1.5: in multipart/digest it is message/rfc822. The
# default charset (US-ASCII) is added when BODYSTRUCTURE is written, as for any text part.
_TEXT_PLAIN = (b"text", b"plain", [])
_MESSAGE_RFC822 = (b"message", b"rfc822", [])


@dataclass(slots=True)
class Entity:
    """One MIME entity: ``message[start:body]`` is its header, ``message[body:end]`` its body."""

    start: int
    body: int
    end: int
    type: bytes  # lower-case
    subtype: bytes
    params: list[tuple[bytes, bytes]]  # (lower-case name, value)
    content: dict[str, bytes]  # first value of each Content-* field
    children: list[Entity] | None = None  # multipart/*
    message: Entity | None = None  # message/rfc822: the encapsulated message

    def param(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.params if k == name), None)

    @property
    def encoding(self) -> bytes:
        """Content-Transfer-Encoding, lower-case; ``7bit`` when absent or invalid."""
        enc = mh.token(self.content.get("content-transfer-encoding"))
        return enc.lower() if enc else b"7bit"


def parse(message: bytes) -> Entity:
    """The entity tree of ``message``; never raises."""
    return _entity(message, 0, len(message), 0, _TEXT_PLAIN, [0])


def _entity(msg: bytes, start: int, end: int, depth: int, default, count: list[int]) -> Entity:
    count[0] += 1
    body = mh.body_offset(msg, start, end)
    content = mh.first_values(msg[start:body], _CONTENT_FIELDS)
    kind, sub, params = mh.content_type(content.get("content-type")) or default
    ent = Entity(start, body, end, kind, sub, params, content)
    deep = depth >= MAX_DEPTH or count[0] >= MAX_PARTS
    if kind == b"multipart":
        boundary = ent.param(b"boundary")
        if not boundary:
            # RFC 2046 §5.1.1 makes boundary mandatory: without it this is not a multipart,
            # and RFC 2045 §5.2 says to treat an invalid Content-Type as text/plain.
            ent.type, ent.subtype, ent.params = _TEXT_PLAIN
        elif deep:
            _opaque(ent)
        else:
            inner = _MESSAGE_RFC822 if sub == b"digest" else _TEXT_PLAIN
            ranges = _split(msg, body, end, b"--" + boundary, MAX_PARTS - count[0])
            ent.children = [_entity(msg, s, e, depth + 1, inner, count) for s, e in ranges]
    elif kind == b"message" and sub == b"rfc822":
        if deep:
            _opaque(ent)
        else:
            ent.message = _entity(msg, body, end, depth + 1, _TEXT_PLAIN, count)
    return ent


def _opaque(ent: Entity) -> None:
    # Too deep to look inside: announced as opaque data, so that clients still get a valid
    # BODYSTRUCTURE (a "MESSAGE" "RFC822" without an envelope would not parse).
    ent.type, ent.subtype, ent.params = b"application", b"octet-stream", []


def _split(msg: bytes, start: int, end: int, delimiter: bytes, limit: int) -> list[tuple[int, int]]:
    """Body ranges of the parts between ``delimiter`` lines (RFC 2046 §5.1.1).

    A delimiter line is ``--boundary`` at the start of a line followed by optional blanks
    (transport padding), or ``--boundary--`` for the close delimiter. The line end before a
    delimiter belongs to the delimiter, not to the part. The preamble and the epilogue are
    not parts; a part left open by a missing close delimiter runs to ``end``.
    """
    ranges: list[tuple[int, int]] = []
    part_start = -1
    pos = start
    size = len(delimiter)
    while True:
        i = msg.find(delimiter, pos, end)
        if i < 0:
            break
        pos = i + size
        if i != start and msg[i - 1] != 0x0A:
            continue
        close = msg.startswith(b"--", pos, end)
        k = pos + 2 if close else pos
        while k < end and msg[k] in (0x20, 0x09):
            k += 1
        if k < end and msg[k] not in (0x0D, 0x0A) and not close:
            continue  # "--boundaryX": a longer line, not our delimiter
        if part_start >= 0:
            e = i
            if e - 2 >= part_start and msg[e - 2 : e] == b"\r\n":
                e -= 2
            elif e - 1 >= part_start and msg[e - 1] == 0x0A:
                e -= 1
            ranges.append((part_start, e))
        if close:
            return ranges
        nl = msg.find(b"\n", k, end)
        part_start = end if nl < 0 else nl + 1
        if len(ranges) + 1 >= limit:
            break  # out of parts: the last one takes the rest
    if part_start >= 0:
        ranges.append((part_start, end))
    return ranges


# --- BODY / BODYSTRUCTURE (RFC 3501 §7.4.2, RFC 9051 §7.5.2) ---


def _clean(value: bytes | None) -> bytes | None:
    # NUL is not allowed in IMAP strings (RFC 3501 §4.3); Dovecot sends 0x80 instead.
    return None if value is None else value.replace(b"\x00", b"\x80")


def _params(params: list[tuple[bytes, bytes]], default_charset: bool = False) -> list | None:
    out: list = []
    for name, value in params:
        out += [name.upper(), _clean(value)]
    if default_charset and not any(name == b"charset" for name, _ in params):
        # RFC 2046 §4.1.2: text without a charset is US-ASCII; said explicitly, as Dovecot does.
        out += [b"CHARSET", b"US-ASCII"]
    return out or None


def _extension(ent: Entity) -> list:
    """body-fld-dsp, body-fld-lang, body-fld-loc."""
    dsp = mh.disposition(ent.content.get("content-disposition"))
    return [
        [dsp[0].upper(), _params(dsp[1])] if dsp else None,
        mh.languages(ent.content.get("content-language")),
        _clean(ent.content.get("content-location")),
    ]


_EMPTY_TEXT = [b"TEXT", b"PLAIN", [b"CHARSET", b"US-ASCII"], None, None, b"7BIT", 0, 0]


def structure(msg: bytes, ent: Entity, extended: bool) -> list:
    if ent.children is not None:
        # RFC 3501 body-type-mpart needs at least one part; a multipart whose boundary never
        # appears gets Dovecot's empty text/plain.
        parts = [structure(msg, child, extended) for child in ent.children]
        if not parts:
            parts = [_EMPTY_TEXT + [None] * 4 if extended else list(_EMPTY_TEXT)]
        # RFC 3501 §9: body-type-mpart = 1*body SP media-subtype -- no space between the
        # bodies (the RFC's examples, Dovecot), which an encode.py list cannot express.
        out = [Raw(b"".join(encode(part) for part in parts)), ent.subtype.upper()]
        if extended:
            out += [_params(ent.params), *_extension(ent)]
        return out
    text = ent.type == b"text"
    out = [
        ent.type.upper(),
        ent.subtype.upper(),
        _params(ent.params, default_charset=text),
        _clean(ent.content.get("content-id")),
        _clean(ent.content.get("content-description")),
        ent.encoding.upper(),
        ent.end - ent.body,
    ]
    if text:
        out.append(msg.count(b"\n", ent.body, ent.end))
    elif ent.message is not None:
        inner = ent.message
        out += [
            envelope(msg[inner.start : inner.body]),
            structure(msg, inner, extended),
            msg.count(b"\n", ent.body, ent.end),
        ]
    if extended:
        out += [_clean(ent.content.get("content-md5")), *_extension(ent)]
    return out


def bodystructure(message: bytes, extended: bool = True) -> list:
    """BODYSTRUCTURE (``extended``) or BODY of ``message`` as encode.py values.

    The parts of a multipart come as one ``Raw`` (see ``structure``), the rest as lists.

    Type, subtype, encoding and parameter names are upper-cased as in the RFC 3501 examples
    (``("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)``); parameter values
    are as written. Sizes are octets of the body as stored; line counts are its LFs.
    """
    return structure(message, parse(message), extended)
