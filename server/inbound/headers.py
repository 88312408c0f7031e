"""The header section of a received message as raw fields, for the inbound checks.

Sans-I/O and byte-exact: ``split`` returns each field with its folded continuation lines and
its CRLF, so joining the fields we keep with the body gives back the message unchanged except
for the fields we dropped (RFC 5322 §2.2.3: a field is its first line plus every following
line that starts with white space). The MX has already refused bare CR/LF, so lines end in
CRLF; a bare LF is still split on, so a message from elsewhere cannot hide a field from us.
"""

from __future__ import annotations

from email.utils import getaddresses


def split(message: bytes) -> tuple[list[bytes], bytes]:
    """(fields, rest): the raw header fields, and everything from the blank line on."""
    fields: list[bytes] = []
    pos = 0
    while pos < len(message):
        end = message.find(b"\n", pos)
        end = len(message) if end < 0 else end + 1
        line = message[pos:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
        pos = end
    return fields, message[pos:]


def name_of(field: bytes) -> bytes:
    """The field name, lower-cased (b"" for a line without a colon)."""
    name, colon, _ = field.partition(b":")
    return name.strip().lower() if colon else b""


def value_of(field: bytes) -> bytes:
    """The field body, unfolded (RFC 5322 §2.2.3), without the trailing CRLF."""
    value = field.partition(b":")[2]
    return value.replace(b"\r\n", b"").replace(b"\n", b"").strip()


def values(fields: list[bytes], name: bytes) -> list[bytes]:
    return [value_of(f) for f in fields if name_of(f) == name]


def address_domains(value: bytes) -> list[str]:
    """The domains of the addresses in an address-list field body (From), lower-cased, in
    order. Non-ASCII (RFC 6532) is taken as UTF-8. Encoded words (RFC 2047) are left
    encoded on purpose: decoded, ``=?utf-8?q?x=40evil.test=2C?= <a@good.test>`` would turn
    into two addresses, one of them chosen by the sender."""
    domains = []
    for _, addr in getaddresses([value.decode("utf-8", "replace")]):
        local, at, domain = addr.rpartition("@")
        if at and local and domain:
            domains.append(domain.strip().rstrip(".").lower())
        else:
            domains.append("")  # an address without a domain: the caller decides
    return domains
