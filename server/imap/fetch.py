"""Building FETCH responses (RFC 3501 §6.4.5, §7.4.2; RFC 3516 BINARY; RFC 7162 MODSEQ).

What the index knows (UID, FLAGS, INTERNALDATE, RFC822.SIZE, MODSEQ) costs no file access.
ENVELOPE, BODYSTRUCTURE and BODY are computed once from the file and cached in the index as
their encoded bytes, so the second FETCH ENVELOPE of a folder reads nothing but SQLite. Body
sections read the file.
"""

from __future__ import annotations

import datetime as dt
import os

from server.imap import mime
from server.imap.encode import Raw, encode, flag_list, nstring

_CACHED = {"ENVELOPE": "envelope", "BODYSTRUCTURE": "bodystructure", "BODY": "body"}
CONTENT_ITEMS = ("BODY", "RFC822", "RFC822.HEADER", "RFC822.TEXT", "BINARY", "BINARY.SIZE")
# Fetching these without .PEEK marks the message \Seen (RFC 3501 §6.4.5).
SETS_SEEN = ("RFC822", "RFC822.TEXT")


def crlf(message: bytes, path: str | None = None) -> bytes:
    """Messages written by other programs (Dovecot, mutt) may have bare LF line ends; IMAP
    sends CRLF and counts sizes in CRLF octets (RFC 3501 §2.3.4, the ,W= in the name).
    ``path``: the file's, whose name may say that there is nothing to convert."""
    if path is not None and named_crlf(path):
        return message
    if message.count(b"\n") == message.count(b"\r\n"):
        return message
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def named_crlf(path: str) -> bool:
    """Whether the file's name gives its size (,S=) equal to its size with CRLF line ends
    (,W=), as the names we and Dovecot write do: then it has no bare LF, and counting line
    ends (a tenth of what serving a small message costs) can be skipped."""
    base = path[path.rfind("/") + 1:].partition(":")[0]
    # The last field of each (as a split on "," would find), without the split: this runs
    # for every message served.
    s, w = base.rfind(",S="), base.rfind(",W=")
    if s < 0 or w < 0:
        return False
    size = base[s + 3:].partition(",")[0]
    return size == base[w + 3:].partition(",")[0] and size.isdigit()


HEADER_READ = 16384


def read_file(path: str, header_only: bool = False, size: int | None = None) -> bytes:
    """A message file, or with ``header_only`` its header (what ENVELOPE needs: one read
    for almost every message).  ``size``: what the index says it is (RFC822.SIZE, never
    less than the file's with CRLF line ends), which saves asking the file system; a file
    bigger than that is still read whole."""
    # os-level calls: a buffered file object costs more system calls (fstat, ioctl, two
    # lseeks) than reading a small message does.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if header_only:
            data = os.read(fd, HEADER_READ)
            # body_offset bounds its scans by the blank line; a plain ``b"\n\n" in data``
            # scanned the whole read, a CRLF message's body included (half the read's cost).
            end = mime.body_offset(data)
            if end < len(data) or len(data) < HEADER_READ:
                return data[:end]  # the body would only be scanned
        else:
            # One more than its size: a read that comes back short has reached the end.
            if size is None:
                size = os.fstat(fd).st_size
            data = os.read(fd, size + 1)
            if len(data) <= size:
                return data
        parts = [data]
        while more := os.read(fd, 65536):  # a file longer than the first read
            parts.append(more)
        return b"".join(parts)
    finally:
        os.close(fd)


def internal_date(epoch: int) -> bytes:
    when = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return b'"' + when.strftime("%d-%b-%Y %H:%M:%S +0000").encode() + b'"'


def needs_file(item) -> bool:
    """True if the item needs the message file (not just the index or its cache)."""
    if item.name in CONTENT_ITEMS:
        return item.name != "BODY" or item.section is not None
    return False


def cached_kind(item) -> str | None:
    if item.name == "BODY" and item.section is not None:
        return None
    return _CACHED.get(item.name)


def sets_seen(item) -> bool:
    if item.name in SETS_SEEN:
        return True
    return item.name in ("BODY", "BINARY") and item.section is not None and not item.peek


def compute_cached(kind: str, message: bytes) -> bytes:
    if kind == "envelope":
        return mime.envelope_bytes(message)
    return encode(mime.bodystructure(message, extended=(kind == "bodystructure")))


def _section_name(item) -> str:
    section = item.section
    parts = [".".join(map(str, section.part))] if section.part else []
    if section.text:
        text = section.text
        if section.fields:
            text += " (" + " ".join(section.fields) + ")"
        parts.append(text)
    return ".".join(parts)


def content_item(item, message: bytes) -> tuple[bytes, bytes] | None:
    """(response item name, encoded value) for an item that reads the message; None when a
    BINARY part has an unknown transfer encoding (the caller answers [UNKNOWN-CTE])."""
    name = item.name
    if name == "RFC822":
        return b"RFC822", nstring(mime.section(message, (), None))
    if name == "RFC822.HEADER":
        return b"RFC822.HEADER", nstring(mime.section(message, (), "HEADER"))
    if name == "RFC822.TEXT":
        return b"RFC822.TEXT", nstring(mime.section(message, (), "TEXT"))
    if name == "BINARY.SIZE":
        size = mime.binary_size(message, item.section.part)
        if size is None:
            return None
        return f"BINARY.SIZE[{_section_name(item)}]".encode(), str(size).encode()
    if name == "BINARY":
        data = mime.binary_section(message, item.section.part)
        if data is None:
            return None
        label = f"BINARY[{_section_name(item)}]"
        data, label = _partial(item, data, label)
        # RFC 3516 §4.3: decoded data with NUL must go as literal8.
        value = b"~{%d}\r\n" % len(data) + data if b"\x00" in data else nstring(data)
        return label.encode(), value
    section = item.section
    data = mime.section(message, section.part, section.text, section.fields)
    label = f"BODY[{_section_name(item)}]"
    data, label = _partial(item, data, label)
    return label.encode(), nstring(data)


def _partial(item, data: bytes, label: str) -> tuple[bytes, str]:
    if item.partial is None:
        return data, label
    origin, count = item.partial
    return mime.partial(data, origin, count), f"{label}<{origin}>"


def render(seq: int, pairs: list[tuple[bytes, bytes]]) -> bytes:
    body = b" ".join(name + b" " + value for name, value in pairs)
    return b"* " + str(seq).encode() + b" FETCH (" + body + b")\r\n"


def flags_item(flags) -> tuple[bytes, bytes]:
    """``flags`` in the order to send them (the session appends \\Recent)."""
    return b"FLAGS", flag_list(flags)


__all__ = ["Raw", "cached_kind", "compute_cached", "content_item", "flags_item",
           "internal_date", "needs_file", "render", "sets_seen"]
