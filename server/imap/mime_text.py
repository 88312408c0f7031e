"""Decoding message content: transfer encodings (RFC 2045 §6), charsets, encoded words
(RFC 2047) and the searchable text of a message. Lenient by design: broken base64, unknown
charsets and malformed encoded words decode to something rather than raise.
"""

from __future__ import annotations

import binascii
import codecs
import re

from server.imap.mime_parts import Entity

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_B64 = bytes(b for b in range(256) if b not in _B64_ALPHABET)

# Text codecs that are no charsets and cost quadratic time or always fail on mail.
_UNSAFE_CODECS = frozenset(("punycode", "idna", "undefined"))

# RFC 2047 §2: encoded-word = "=?" charset "?" encoding "?" encoded-text "?="
_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


def base64(data: bytes) -> bytes:
    """Lenient base64 (RFC 2045 §6.8): "any characters outside of the base64 alphabet are
    to be ignored", and "the occurrence of any '=' characters may be taken as evidence that
    the end of the data has been reached"; missing padding is repaired."""
    end = data.find(b"=")
    clean = (data if end < 0 else data[:end]).translate(None, _NOT_B64)
    rest = len(clean) % 4
    if rest == 1:
        clean = clean[:-1]  # one stray sextet carries no whole octet
    elif rest:
        clean += b"=" * (4 - rest)
    return binascii.a2b_base64(clean)


def decode_cte(data: bytes, encoding: bytes) -> bytes | None:
    """The body with its Content-Transfer-Encoding removed; None for an unknown encoding
    (RFC 3516 §4.3: the server answers [UNKNOWN-CTE])."""
    if encoding in (b"7bit", b"8bit", b"binary"):
        return data
    if encoding == b"base64":
        return base64(data)
    if encoding == b"quoted-printable":
        return binascii.a2b_qp(data)
    return None


def _guess(data: bytes) -> str:
    # Undeclared 8-bit text: UTF-8 when it is valid, else the usual Western legacy charset.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def decode_charset(data: bytes, charset: bytes | None) -> str:
    name = (charset or b"").decode("ascii", "ignore").split("*")[0].strip().lower()
    if name in ("", "us-ascii", "ascii", "unknown-8bit", "x-unknown"):
        return _guess(data)
    try:
        codec = codecs.lookup(name)
        if codec.name in _UNSAFE_CODECS:
            return _guess(data)
        return data.decode(codec.name, "replace")
    except (LookupError, UnicodeError, ValueError):
        return _guess(data)


def decode_words(raw: bytes) -> str:
    """A header value with its RFC 2047 encoded words decoded.

    Whitespace between adjacent encoded words is dropped (§6.2), and adjacent words in the
    same charset are decoded together, so a character split across two words survives.
    """
    if b"=?" not in raw:
        return _guess(raw)
    out: list[str] = []
    pending: list = []  # [charset, bytearray] of words not yet decoded
    pos = 0
    for m in _ENCODED_WORD.finditer(raw):
        gap = raw[pos : m.start()]
        if gap and not (pending and not gap.strip(b" \t\r\n")):
            if pending:
                out.append(decode_charset(bytes(pending[1]), pending[0]))
                pending = []
            out.append(_guess(gap))
        charset, kind, text = m.groups()
        data = base64(text) if kind in b"bB" else binascii.a2b_qp(text, header=True)
        charset = charset.split(b"*")[0].lower()  # RFC 2231 §5: "charset*language"
        if pending and pending[0] == charset:
            pending[1] += data
        else:
            if pending:
                out.append(decode_charset(bytes(pending[1]), pending[0]))
            pending = [charset, bytearray(data)]
        pos = m.end()
    if pending:
        out.append(decode_charset(bytes(pending[1]), pending[0]))
    out.append(_guess(raw[pos:]))
    return "".join(out)


def body_text(message: bytes, ent: Entity) -> list[str]:
    """The searchable text of an entity's body: every text/* part decoded from its transfer
    encoding and charset, and the decoded header of every encapsulated message. Other parts
    (images, archives) are not text and are skipped, as Dovecot does without FTS."""
    out: list[str] = []
    stack = [ent]
    while stack:
        cur = stack.pop()
        if cur.children is not None:
            stack.extend(reversed(cur.children))
        elif cur.message is not None:
            inner = cur.message
            out.append(decode_words(message[inner.start : inner.body]))
            stack.append(inner)
        elif cur.type == b"text":
            raw = message[cur.body : cur.end]
            data = decode_cte(raw, cur.encoding)
            out.append(decode_charset(raw if data is None else data, cur.param(b"charset")))
    return out
