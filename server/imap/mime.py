"""Message structure for FETCH: ENVELOPE, BODY/BODYSTRUCTURE, BODY[section], BINARY[section]
(RFC 3501 §6.4.5 and §7.4.2, RFC 9051 §6.4.5 and §7.5.2, RFC 3516).

Input is a stored message as bytes (CRLF line ends, though bare LF is tolerated); output is
encode.py values or bytes. Nothing here raises on malformed mail: a garbled header field
becomes NIL or its RFC default, broken MIME a simpler structure. The work is split by
concern: ``mime_header`` (header fields and parameters), ``mime_address`` (ENVELOPE),
``mime_parts`` (the MIME tree and BODYSTRUCTURE), ``mime_text`` (decoding).
"""

from __future__ import annotations

from server.imap.mime_address import envelope, envelope_bytes
from server.imap.mime_header import body_offset, field_spans, header_section, header_value
from server.imap.mime_parts import Entity, bodystructure, parse
from server.imap.mime_text import decode_cte

__all__ = [
    "binary_section",
    "binary_size",
    "body_offset",
    "bodystructure",
    "envelope",
    "envelope_bytes",
    "find_part",
    "header_section",
    "header_value",
    "partial",
    "section",
]


def find_part(root: Entity, part: tuple[int, ...]) -> Entity | None:
    """The entity a section-part names (RFC 3501 §6.4.5), None when there is no such part.

    The parts of a multipart are its children; a non-multipart entity has only part 1,
    itself (its body). To go deeper, a part must be a multipart (its children come next) or
    a MESSAGE/RFC822, whose part numbers continue inside the encapsulated message.
    """
    ent = root
    for depth, number in enumerate(part):
        parts = ent.children if ent.children is not None else [ent]
        if not 1 <= number <= len(parts):
            return None
        chosen = parts[number - 1]
        if depth == len(part) - 1:
            return chosen
        if chosen.children is not None:
            ent = chosen
        elif chosen.message is not None:
            ent = chosen.message
        else:
            return None
    return root


def _no_nul(data: bytes) -> bytes:
    # RFC 3501 §4.3: a literal must not contain NUL; Dovecot sends 0x80 in its place. The
    # replacement keeps every size and offset, so RFC822.SIZE and partial fetches agree.
    return data.replace(b"\x00", b"\x80") if b"\x00" in data else data


def _header_fields(header: bytes, names: tuple[str, ...], exclude: bool) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT: matching fields in their original order and bytes,
    then the blank line (RFC 3501 §6.4.5: "the subset ... includes the blank line")."""
    wanted = {name.lower() for name in names}
    out = []
    for name, start, end in field_spans(header):
        if (name in wanted) != exclude:
            raw = header[start:end]
            out.append(raw if raw.endswith(b"\n") else raw + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def section(message: bytes, part: tuple[int, ...], text: str | None,
            fields: tuple[str, ...] = ()) -> bytes:
    """The contents of BODY[<part>.<text> (<fields>)] (RFC 3501 §6.4.5).

    ``text`` is None (the whole part), ``HEADER``, ``HEADER.FIELDS``, ``HEADER.FIELDS.NOT``,
    ``TEXT`` or ``MIME``. A part that does not exist, and HEADER/TEXT of a part that is not
    a MESSAGE/RFC822, give b"" (RFC 3501: "an empty string"; Dovecot does the same).
    """
    text = text.upper() if text else None
    if not part:
        if text is None:
            return _no_nul(message)
        if text == "MIME":
            return b""  # RFC 3501 §6.4.5: MIME needs a part number; the grammar refuses it
        start, body, end = 0, body_offset(message), len(message)
    else:
        ent = find_part(parse(message), part)
        if ent is None:
            return b""
        if text is None:
            return _no_nul(message[ent.body : ent.end])
        if text == "MIME":
            return _no_nul(message[ent.start : ent.body])
        if ent.message is None:
            return b""
        start, body, end = ent.message.start, ent.message.body, ent.message.end
    if text == "HEADER":
        return _no_nul(message[start:body])
    if text == "TEXT":
        return _no_nul(message[body:end])
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return _no_nul(_header_fields(message[start:body], fields, text.endswith(".NOT")))
    raise ValueError(f"unknown section text {text!r}")


def partial(data: bytes, origin: int, count: int) -> bytes:
    """``<origin.count>`` of a fetched section: RFC 3501 §6.4.5, an origin past the end gives
    an empty string and a count past the end gives what there is."""
    origin = max(origin, 0)
    return data[origin : origin + max(count, 0)]


def binary_section(message: bytes, part: tuple[int, ...]) -> bytes | None:
    """BINARY[<part>] (RFC 3516 §4.2): the part with its transfer encoding removed.

    None when the encoding is unknown (the caller answers ``NO [UNKNOWN-CTE]``, RFC 3516
    §4.3); b"" for a part that does not exist. BINARY[] is the message as stored: a
    message has no transfer encoding of its own to undo. Multiparts are returned as they
    are: RFC 2045 §6.4 allows them no encoding but 7bit/8bit/binary.
    """
    if not part:
        return message
    ent = find_part(parse(message), part)
    if ent is None:
        return b""
    data = message[ent.body : ent.end]
    if ent.children is not None:
        return data
    return decode_cte(data, ent.encoding)


def binary_size(message: bytes, part: tuple[int, ...]) -> int | None:
    """BINARY.SIZE[<part>] (RFC 3516 §4.2): the decoded size, None for an unknown encoding."""
    data = binary_section(message, part)
    return None if data is None else len(data)
