"""Pending ACME challenges, served by mailstead's own listeners.

The ACME client (a worker thread) adds a challenge before telling the CA to validate it and
removes it afterwards; the HTTP listener and the TLS listeners (event loop) read it. Writers
replace whole dicts under a lock and readers take one reference to the current dict, so a
reader never sees a half-made entry and never waits: the SNI callback runs inside every TLS
handshake of every listener.

http-01 (RFC 8555 §8.3): GET /.well-known/acme-challenge/<token> answers the key authorization.

tls-alpn-01 (RFC 8737 §3): a handshake with SNI = the name and ALPN "acme-tls/1" must present a
self-signed certificate for that name carrying the critical acmeIdentifier extension.

Limit: Python's ssl module has no ALPN-select hook that runs before the certificate is chosen
(OpenSSL's client-hello callback is not exposed, and ``selected_alpn_protocol()`` is still None
inside the SNI callback), so the switch is made on the SNI name alone. While a tls-alpn-01
challenge for a name is pending, an ordinary client connecting with that SNI name also gets the
challenge certificate and fails to verify it. The window is the few seconds the CA takes to
validate (the client removes the challenge as soon as the authorization leaves "pending"); mail
clients retry. http-01 has no such window, which is one reason to prefer it when port 80 is open.
"""

from __future__ import annotations

import datetime
import hashlib
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from maildir.safeio import atomic_write

ACME_TLS_1 = "acme-tls/1"  # RFC 8737 §3: the ALPN protocol id the CA offers
# RFC 8737 §3: id-pe-acmeIdentifier
ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
# The certificate only has to outlive the validation; a day absorbs clock skew at the CA.
_VALIDITY = datetime.timedelta(days=1)


def _key(name: str) -> str:
    return name.rstrip(".").lower()


def tls_alpn01_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """The RFC 8737 §3 validation certificate and its key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + _VALIDITY)
        # RFC 8737 §3: exactly one dNSName, the name being validated.
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # RFC 8737 §3: critical; value is DER OCTET STRING (tag 0x04, length 32) of the digest.
        .add_extension(x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + digest),
                       critical=True)
        .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _challenge_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 §4: TLS 1.2 or higher only
    ctx.set_alpn_protocols([ACME_TLS_1])
    # load_cert_chain only reads files: a private temporary directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="mailstead-acme-") as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        atomic_write(cert_file, cert_pem, 0o600)
        atomic_write(key_file, key_pem, 0o600)
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


class ChallengeResponder:
    """Pending challenges, thread-safe (the ACME client runs in a worker thread, the listeners
    on the event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # serialises writers only
        self._http: dict[str, str] = {}
        self._alpn: dict[str, ssl.SSLContext] = {}

    # ------------------------------------------------------------------ http-01
    def add_http01(self, token: str, key_authorization: str) -> None:
        with self._lock:
            self._http = {**self._http, token: key_authorization}

    def remove_http01(self, token: str) -> None:
        with self._lock:
            self._http = {k: v for k, v in self._http.items() if k != token}

    def http01(self, token: str) -> str | None:
        """The body for GET /.well-known/acme-challenge/<token> (text/plain), or None (404)."""
        return self._http.get(token)

    # ------------------------------------------------------------------ tls-alpn-01
    def add_tls_alpn01(self, name: str, key_authorization: str) -> None:
        ctx = _challenge_context(*tls_alpn01_certificate(_key(name), key_authorization))
        with self._lock:
            self._alpn = {**self._alpn, _key(name): ctx}

    def remove_tls_alpn01(self, name: str) -> None:
        with self._lock:
            self._alpn = {k: v for k, v in self._alpn.items() if k != _key(name)}

    def pending(self) -> int:
        """How many challenges are being served (0 once every issue() has returned)."""
        return len(self._http) + len(self._alpn)

    def install(self, ctx: ssl.SSLContext) -> None:
        """Switch handshakes whose SNI names a pending tls-alpn-01 challenge to its context.

        Every other handshake is left alone; an SNI callback already set on ``ctx`` keeps
        running for them. Call once per server context (it is shared by all TLS listeners).
        """
        previous = ctx.sni_callback

        def sni_callback(ssl_object, server_name, server_ctx):
            alpn = self._alpn  # one read: a consistent snapshot without locking
            if alpn and server_name:
                challenge = alpn.get(_key(server_name))
                if challenge is not None:
                    try:
                        ssl_object.context = challenge
                    except Exception:  # never fail a handshake from here
                        pass
                    return None
            return previous(ssl_object, server_name, server_ctx) if previous else None

        ctx.sni_callback = sni_callback
