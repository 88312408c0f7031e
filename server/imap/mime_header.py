"""Header sections of stored messages, read without a full MIME parse (RFC 5322 §2.2, §3.2.2).

Everything works on offsets into the message bytes so that a 50 MB message costs one scan
for its blank line, not a copy. Line ends are CRLF as stored, but a bare LF is accepted
everywhere (mail written by other tools), and nothing here raises on malformed input:
a line without a colon is kept as a field with an empty name, a header without a blank
line simply runs to the end of the data.
"""

from __future__ import annotations

import re

# RFC 2045 §5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>
_TOKEN = re.compile(rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_WSP = b" \t"


def body_offset(message: bytes, start: int = 0, end: int | None = None) -> int:
    """Offset just past the blank line that ends the header starting at ``start``.

    ``end`` (default: the end of ``message``) when there is no blank line: then the whole
    range is header, as Dovecot treats it.
    """
    if end is None:
        end = len(message)
    if message.startswith(b"\r\n", start, end):
        return start + 2
    if message.startswith(b"\n", start, end):
        return start + 1
    crlf = message.find(b"\n\r\n", start, end)
    # A bare-LF blank line can only win if it comes before the CRLF one: bound the scan.
    lf = message.find(b"\n\n", start, end if crlf < 0 else crlf + 1)
    if lf >= 0:
        return lf + 2
    if crlf >= 0:
        return crlf + 3
    return end


def header_section(message: bytes) -> bytes:
    """BODY[HEADER]: the header including the blank line that ends it (RFC 3501 §6.4.5)."""
    return message[: body_offset(message)]


def field_spans(header: bytes) -> list[tuple[str, int, int]]:
    """``[(lower-case name, start, end)]`` of every field up to the blank line, in order.

    A field spans its continuation lines and ends after its last line end. A line without
    a colon gets the name "" (RFC 5322 has no such thing; it must still round-trip in
    BODY[HEADER.FIELDS.NOT]).
    """
    spans: list[list] = []
    pos, n = 0, len(header)
    while pos < n:
        nl = header.find(b"\n", pos)
        nxt = n if nl < 0 else nl + 1
        first = header[pos]
        if first in (0x0A, 0x0D) and header[pos:nxt] in (b"\r\n", b"\n"):
            break  # the blank line: end of the header section
        if first in (0x20, 0x09) and spans:
            spans[-1][2] = nxt  # RFC 5322 §2.2.3: a continuation line of the field above
        else:
            colon = header.find(b":", pos, nxt)
            name = header[pos:colon].strip(b" \t").lower() if colon >= 0 else b""
            spans.append([name.decode("latin-1"), pos, nxt])
        pos = nxt
    return [(name, start, end) for name, start, end in spans]


def fields(header: bytes) -> list[tuple[str, bytes]]:
    """``[(lower-case name, raw field bytes with continuation lines and line ends)]``."""
    return [(name, header[start:end]) for name, start, end in field_spans(header)]


def unfold(raw_field: bytes) -> bytes:
    """The field's value: after the colon, unfolded (RFC 5322 §2.2.3), outer blanks removed.

    CR and LF are dropped wherever they are (a bare CR inside a value included), so the
    result is always safe inside an IMAP quoted string or literal.
    """
    colon = raw_field.find(b":")
    value = raw_field[colon + 1 :] if colon >= 0 else raw_field
    return value.translate(None, b"\r\n").strip(_WSP)


def header_value(header: bytes, name: str) -> bytes | None:
    """The unfolded value of the first field called ``name`` (any case), None when absent."""
    wanted = name.lower()
    for field_name, start, end in field_spans(header):
        if field_name == wanted:
            return unfold(header[start:end])
    return None


_FIELD_FINDERS: dict[frozenset[str], re.Pattern] = {}


def first_values(header: bytes, names: frozenset[str]) -> dict[str, bytes]:
    """Unfolded values of the first occurrence of each field in ``names`` (lower-case).

    One regex pass instead of splitting every line: this runs for each message of a first
    FETCH ENVELOPE and for every MIME part. It finds the same fields as ``field_spans``: a
    name at the start of a line, and continuation lines that start with a blank.
    """
    finder = _FIELD_FINDERS.get(names)
    if finder is None:
        alternatives = b"|".join(re.escape(n.encode()) for n in sorted(names, key=len)[::-1])
        finder = re.compile(rb"^(" + alternatives + rb")[ \t]*:(.*(?:\n[ \t].*)*)",
                            re.I | re.M)
        _FIELD_FINDERS[names] = finder
    found: dict[str, bytes] = {}
    for m in finder.finditer(header):
        name = m.group(1).lower().decode("ascii")
        if name not in found:
            found[name] = m.group(2).translate(None, b"\r\n").strip(_WSP)
    return found


# --- Content-Type / Content-Disposition parameters (RFC 2045 §5.1, RFC 2183, RFC 2231) ---


def _segments(value: bytes) -> list[bytes]:
    """Split at ``;`` outside quoted strings, dropping comments (RFC 5322 §3.2.2 CFWS)."""
    if b"(" not in value and b'"' not in value:
        return value.split(b";")
    out: list[bytes] = []
    cur = bytearray()
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == 0x22:  # '"': copy the quoted string as is; unterminated runs to the end
            j = i + 1
            while j < n and value[j] != 0x22:
                j += 2 if value[j] == 0x5C else 1
            cur += value[i : j + 1]
            i = j + 1
        elif c == 0x28:  # '(': skip a comment, nested ones included
            depth = 1
            i += 1
            while i < n and depth:
                if value[i] == 0x5C:
                    i += 1
                elif value[i] == 0x28:
                    depth += 1
                elif value[i] == 0x29:
                    depth -= 1
                i += 1
            cur += b" "
        elif c == 0x3B:  # ';'
            out.append(bytes(cur))
            cur.clear()
            i += 1
        else:
            cur.append(c)
            i += 1
    out.append(bytes(cur))
    return out


def _unquote(value: bytes) -> bytes:
    value = value.strip(b" \t")
    if value[:1] != b'"':
        return value
    body = value[1:-1] if len(value) > 1 and value.endswith(b'"') else value[1:]
    return re.sub(rb"\\(.)", rb"\1", body, flags=re.S) if b"\\" in body else body


def _parameters(segments: list[bytes]) -> list[tuple[bytes, bytes]]:
    """``[(lower-case name, value)]`` with RFC 2231 continuations joined.

    Like Dovecot: ``name*0="a"; name*1="b"`` becomes ``name="ab"``; when any piece is
    extended (``*=``), the joined value stays encoded under ``name*`` (``utf-8''%E2%82%AC``)
    so that clients, which know RFC 2231, decode it themselves.
    """
    plain: list[tuple[bytes, bytes | None]] = []  # None: where a continued one goes
    pieces: dict[bytes, list[tuple[int, bool, bytes]]] = {}
    order: list[bytes] = []
    for seg in segments:
        name, eq, raw = seg.partition(b"=")
        name = name.strip(b" \t").lower()
        if not eq or not name:
            continue
        extended = name.endswith(b"*")
        base = name[:-1] if extended else name
        head, star, number = base.rpartition(b"*")
        if star and number.isdigit() and head:
            if head not in pieces:
                pieces[head] = []
                order.append(head)
                plain.append((head, None))
            pieces[head].append((int(number), extended, _unquote(raw)))
        elif extended:
            plain.append((base + b"*", _unquote(raw)))
        else:
            plain.append((base, _unquote(raw)))
    joined: dict[bytes, tuple[bytes, bytes]] = {}
    for head in order:
        parts = sorted(pieces[head], key=lambda p: p[0])
        if any(ext for _, ext, _ in parts):
            value = b"".join(v if ext else _percent(v) for _, ext, v in parts)
            joined[head] = (head + b"*", value)
        else:
            joined[head] = (head, b"".join(v for _, _, v in parts))
    return [joined[name] if value is None else (name, value) for name, value in plain]


def _percent(value: bytes) -> bytes:
    # RFC 2231 §7: a plain piece joined to extended ones must be %-encoded like them.
    return re.sub(rb"[^!#$&+\-.0-9A-Z^_`a-z{|}~]", lambda m: b"%%%02X" % m.group()[0], value)


def content_type(value: bytes | None) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """``(type, subtype, params)``, type and subtype lower-case; None when absent or invalid.

    RFC 2045 §5.2: an invalid Content-Type is taken as the default, like a missing one.
    """
    if value is None:
        return None
    segments = _segments(value)
    media = bytes(segments[0]).translate(None, b" \t")
    kind, slash, sub = media.partition(b"/")
    if not slash or not _TOKEN.fullmatch(kind) or not _TOKEN.fullmatch(sub):
        return None
    return kind.lower(), sub.lower(), _parameters(segments[1:])


def disposition(value: bytes | None) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """``(type, params)`` of a Content-Disposition (RFC 2183); None when absent or invalid."""
    if value is None:
        return None
    segments = _segments(value)
    kind = segments[0].strip(b" \t")
    if not _TOKEN.fullmatch(kind):
        return None
    return kind, _parameters(segments[1:])


def token(value: bytes | None) -> bytes | None:
    """A single MIME token (Content-Transfer-Encoding), comments removed; None if not one."""
    if value is None:
        return None
    text = _segments(value)[0].strip(b" \t")
    return text if _TOKEN.fullmatch(text) else None


def languages(value: bytes | None) -> list[bytes] | None:
    """Content-Language tags (RFC 3282), None when there are none."""
    if value is None:
        return None
    tags = [t.strip(b" \t") for t in b" ".join(_segments(value)).split(b",")]
    tags = [t for t in tags if _TOKEN.fullmatch(t)]
    return tags or None
