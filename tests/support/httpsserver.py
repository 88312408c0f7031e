"""A test CA and a loopback HTTPS server that sends whatever bytes a test sets.

    ca = TestCA()
    cert, key = ca.issue(tmp_path, "mta-sts.remote.test")       # leaf with that DNS SAN
    with HTTPSTestServer(cert, key) as web:                      # 127.0.0.1, free port
        web.response = http_response(b"version: STSv1\\n...")    # raw bytes, sent as-is
        ... client with cafile=ca.write(tmp_path / "ca.pem"), port web.port ...
        assert [r.path for r in web.requests] == ["/.well-known/mta-sts.txt"]

The server reads one request head per connection, records it, writes ``response`` byte for
byte (so tests can send broken framing, wrong headers or oversize bodies) and closes. TLS
handshakes the client refuses are counted in ``handshake_errors``, not raised.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class TestCA:
    """A CA:TRUE root with an EC P-256 key (fast to make), issuing CA:FALSE server leaves."""

    __test__ = False

    def __init__(self, name: str = "mailstead test CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256()))

    def write(self, path: Path) -> str:
        """The root certificate as a PEM file (a ``cafile``); returns the path as str."""
        Path(path).write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return str(path)

    def issue(self, directory: Path, *names: str, valid_days: int = 30) -> tuple[str, str]:
        """A leaf for the DNS names (or IP addresses) given; returns (cert, key) PEM paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + valid_days * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256()))
        # The serial keeps leaves for one name from two CAs apart.
        base = Path(directory) / f"{names[0].replace('*', '_')}-{cert.serial_number:x}"
        certfile, keyfile = Path(f"{base}.crt"), Path(f"{base}.key")
        certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        keyfile.write_bytes(_pem_key(key))
        return str(certfile), str(keyfile)


def http_response(body: bytes = b"", status: str = "200 OK", content_type: str = "text/plain",
                  framing: str = "length", headers: tuple[str, ...] = ()) -> bytes:
    """Response bytes. framing: "length" (Content-Length), "chunked" (two chunks when the body
    allows) or "close" (no length: the body ends when the connection does)."""
    lines = [f"HTTP/1.1 {status}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines += headers
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        half = len(body) // 2
        parts = [p for p in (body[:half], body[half:]) if p]
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    elif framing != "close":
        raise ValueError(f"unknown framing {framing!r}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    version: str
    headers: dict[str, str]  # lower-case names
    sni: str | None


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        owner: HTTPSTestServer = self.server.owner
        sni: list[str | None] = [None]
        ctx = owner._context(sni)
        self.request.settimeout(10)
        # Without this, the response waits ~40 ms behind TLS 1.3 session tickets (Nagle
        # against the client's delayed ACK).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            conn = ctx.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            with owner._lock:
                owner.handshake_errors.append(err)
            return
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            first, *lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, path, version = first.split(" ", 2)
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            with owner._lock:
                owner.requests.append(Request(method, path, version, headers, sni[0]))
                response, delay = owner.response, owner.delay
            if delay and owner._stopping.wait(delay):
                return
            conn.sendall(response)
            try:
                conn.unwrap()  # a clean TLS close, so read-to-close bodies end properly
            except (ssl.SSLError, OSError):
                pass
        except OSError:
            pass
        finally:
            conn.close()


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class HTTPSTestServer:
    __test__ = False

    def __init__(self, certfile: str, keyfile: str, host: str = "127.0.0.1", port: int = 0):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"test HTTPS server must listen on loopback, not {host}")
        self.host, self.port = host, port
        self.certfile, self.keyfile = certfile, keyfile
        self.response = http_response()
        self.delay = 0.0  # seconds to wait before answering (timeouts); cut short by stop()
        self.requests: list[Request] = []
        self.handshake_errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def set_certificate(self, certfile: str, keyfile: str) -> None:
        """Serve another certificate from the next connection on."""
        with self._lock:
            self.certfile, self.keyfile = certfile, keyfile

    def _context(self, sni: list) -> ssl.SSLContext:
        with self._lock:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.certfile, self.keyfile)

        def remember(sock, name, _ctx):
            sni[0] = name
        ctx.sni_callback = remember
        return ctx

    def start(self) -> HTTPSTestServer:
        self._server = (_Server6 if ":" in self.host else _Server)((self.host, self.port), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.02},
                                        name=f"httpstest-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def __enter__(self) -> HTTPSTestServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
