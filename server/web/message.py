"""HTTP/1.x messages without I/O (RFC 9112): find the end of a request head, parse it into a
``Request``, and turn a ``Response`` into bytes.

Only what a listener answering GET and HEAD needs. Parsing is strict where leniency is how
request smuggling and header injection start (bare CR, obs-fold, whitespace before the colon,
duplicate Host or Content-Length): such requests raise ``HTTPError`` carrying the status to
answer with, and the connection is closed after every response anyway.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlsplit

# The request line and every header together; 8 KiB is what nginx and Apache allow per line,
# and nothing we serve needs more than a Host header (RFC 9112 §2.3 leaves the limit to us).
MAX_HEAD = 8 * 1024
MAX_HEADERS = 64
SERVER_NAME = "mailstead"

# RFC 9110 §5.6.2: token = 1*tchar
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_TARGET = re.compile(rb"[\x21-\x7e]+")  # visible ASCII only: no spaces, no controls
# Field values may hold HTAB, SP, visible ASCII and obs-text, never other controls (RFC 9110
# §5.5): a NUL or a stray CR in a value is refused rather than passed on.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEAD_END = re.compile(rb"\n\r?\n")
# Host: a DNS name or IPv4 address, or an IPv6 literal in brackets, then an optional port.
_HOST = re.compile(r"(?:([a-z0-9_][a-z0-9_.-]{0,252})|\[([0-9a-f:.]{2,45})\])(?::([0-9]{0,5}))?")


class HTTPError(Exception):
    """A request we answer with ``status`` and a one-line text body."""

    def __init__(self, status: HTTPStatus, detail: str | None = None):
        super().__init__(detail or status.phrase)
        self.status = status
        self.detail = detail or status.phrase

    def response(self) -> Response:
        return text_response(self.status, self.detail)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    path: str
    """The target's path, without the query: what routing and the log see."""
    query: str
    version: tuple[int, int]
    host: str | None
    """From the Host header (or an absolute-form target): lower case, no port, no final dot."""
    headers: tuple[tuple[str, str], ...]
    """Field names in lower case, in the order received."""
    content_length: int = 0
    chunked: bool = False

    @property
    def has_body(self) -> bool:
        return self.content_length > 0 or self.chunked


@dataclass(slots=True)
class Response:
    status: HTTPStatus
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


def text_response(status: HTTPStatus, message: str, headers=()) -> Response:
    return Response(status, f"{message}\n".encode(), headers=list(headers))


def head_end(buf: bytes | bytearray, limit: int = MAX_HEAD) -> int | None:
    """Where the request head in ``buf`` ends (just past the empty line), or None if more is
    needed; HTTPError once it cannot fit in ``limit`` bytes."""
    # RFC 9112 §2.2: ignore empty lines before the request line (some clients send a CRLF
    # after a POST body); they still count against the limit.
    start = len(buf) - len(buf.lstrip(b"\r\n"))
    m = _HEAD_END.search(buf, start)
    if m is not None and m.end() <= limit:
        return m.end()
    if m is None and len(buf) <= limit:
        return None
    if b"\n" not in buf[start:limit]:
        # RFC 9112 §3: a request-target longer than we wish to parse gets 414.
        raise HTTPError(HTTPStatus.REQUEST_URI_TOO_LONG)
    raise HTTPError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)  # RFC 6585 §5


def parse_host(value: str) -> str | None:
    """A Host value (RFC 9110 §7.2) as a bare lower-case name; None when empty."""
    value = value.lower()
    if not value:
        return None
    m = _HOST.fullmatch(value)
    if m is None:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "Bad Host header")
    name, v6, port = m.groups()
    if port is not None and (not port or int(port) > 65535):
        raise HTTPError(HTTPStatus.BAD_REQUEST, "Bad Host header")
    if v6 is not None:
        try:
            return f"[{ipaddress.IPv6Address(v6)}]"
        except ValueError:
            raise HTTPError(HTTPStatus.BAD_REQUEST, "Bad Host header") from None
    name = name[:-1] if name.endswith(".") else name
    if not name or ".." in name:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "Bad Host header")
    return name


def _lines(head: bytes) -> list[bytes]:
    lines = head.lstrip(b"\r\n").split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    for line in lines:
        if b"\r" in line:
            # RFC 9112 §2.2: a bare CR is invalid; refusing it beats guessing like a proxy might.
            raise HTTPError(HTTPStatus.BAD_REQUEST, "Bare CR in request")
    return lines


def _headers(lines: list[bytes]) -> list[tuple[str, str]]:
    if len(lines) > MAX_HEADERS:
        raise HTTPError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
    out = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            # RFC 9112 §5.2: obsolete line folding may be refused with 400.
            raise HTTPError(HTTPStatus.BAD_REQUEST, "Folded header")
        name, colon, value = line.partition(b":")
        # RFC 9112 §5.1: whitespace between name and colon MUST get 400 (a smuggling vector).
        if not colon or not _TOKEN.fullmatch(name):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "Malformed header")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "Control character in header")
        out.append((name.decode("ascii").lower(), value.decode("latin-1")))
    return out


def _content_length(headers: list[tuple[str, str]]) -> int:
    values = [v for n, v in headers if n == "content-length"]
    if not values:
        return 0
    # RFC 9112 §6.3: several or invalid lengths are an unrecoverable error; we do not merge
    # equal duplicates either.
    if len(values) > 1 or not values[0].isdigit() or not values[0].isascii() or \
            len(values[0]) > 18:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "Bad Content-Length")
    return int(values[0])


def parse_request(head: bytes) -> Request:
    """Parse a request head (request line and header fields, as found by ``head_end``)."""
    lines = _lines(head)
    if not lines:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "Empty request")
    parts = lines[0].split(b" ")
    if len(parts) != 3:  # also refuses HTTP/0.9's "GET /"
        raise HTTPError(HTTPStatus.BAD_REQUEST, "Malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise HTTPError(HTTPStatus.BAD_REQUEST, "Malformed request line")
    m = _VERSION.fullmatch(version)
    if m is None:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "Malformed request line")
    major, minor = int(m[1]), int(m[2])
    if major != 1:  # RFC 9110 §15.6.6; also the HTTP/2 preface "PRI * HTTP/2.0"
        raise HTTPError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
    headers = _headers(lines[1:])

    hosts = [v for n, v in headers if n == "host"]
    # RFC 9112 §3.2: HTTP/1.1 without Host, or with two, MUST get 400.
    if len(hosts) > 1 or (not hosts and minor >= 1):
        raise HTTPError(HTTPStatus.BAD_REQUEST, "Missing or repeated Host header")
    host = parse_host(hosts[0]) if hosts else None

    method_s, target_s = method.decode("ascii"), target.decode("ascii")
    if target_s.startswith("/"):
        path, _, query = target_s.partition("?")
    elif target_s[:7].lower() == "http://" or target_s[:8].lower() == "https://":
        # RFC 9112 §3.2.2: absolute-form must be accepted, and its authority wins over Host.
        try:
            url = urlsplit(target_s)
        except ValueError:  # say, an unclosed IPv6 bracket
            raise HTTPError(HTTPStatus.BAD_REQUEST, "Bad request target") from None
        host = parse_host(url.netloc)
        path, query = url.path or "/", url.query
    elif method_s in ("GET", "HEAD"):
        raise HTTPError(HTTPStatus.BAD_REQUEST, "Bad request target")
    else:  # asterisk- or authority-form (OPTIONS, CONNECT): refused by method anyway
        path, query = target_s, ""

    transfer = [v for n, v in headers if n == "transfer-encoding"]
    length = _content_length(headers)
    # RFC 9112 §6.3: both framings at once is how requests are smuggled past a proxy.
    if transfer and any(n == "content-length" for n, _ in headers):
        raise HTTPError(HTTPStatus.BAD_REQUEST, "Both Content-Length and Transfer-Encoding")
    return Request(method_s, target_s, path, query, (major, minor), host, tuple(headers),
                   content_length=length, chunked=bool(transfer))


def serialize(resp: Response, *, head_only: bool = False, hsts: bool = False,
              now: float | None = None) -> bytes:
    """The response as bytes, with the headers every response carries. A HEAD answer keeps the
    Content-Length the GET would have had (RFC 9110 §9.3.2)."""
    headers = [
        ("Date", email.utils.formatdate(now, usegmt=True)),
        ("Server", SERVER_NAME),
        ("Content-Type", resp.content_type),
        ("Content-Length", str(len(resp.body))),
        # One request per connection: no keep-alive state, no pipelining, nothing to smuggle.
        ("Connection", "close"),
        *resp.headers,
    ]
    if hsts:
        # RFC 6797 §7.2: HSTS only over secure transport; a plain-HTTP one would be ignored.
        headers.append(("Strict-Transport-Security", "max-age=31536000"))
    lines = [f"HTTP/1.1 {resp.status.value} {resp.status.phrase}"]
    for name, value in headers:
        if "\r" in value or "\n" in value:  # never let a value start a new header
            raise ValueError(f"header {name} holds a line break")
        lines.append(f"{name}: {value}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + resp.body
