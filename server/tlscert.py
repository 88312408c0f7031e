"""TLS: the self-signed certificate made at init, and the server ``SSLContext`` every listener uses.

The self-signed leaf is deliberately ``CA:FALSE`` with serverAuth EKU: Thunderbird rejects a
``CA:TRUE`` server certificate, and mbsync/offlineimap match DNS names only, so the SANs carry
the hostname and ``localhost`` as DNS names besides ``127.0.0.1``.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from maildir.safeio import atomic_write, make_private_dir

SELF_SIGNED_DAYS = 825  # the longest validity Apple clients accept for a TLS server certificate

HANDSHAKE_TIMEOUT = 30.0
# When the server ends a TLS connection it sends close_notify and waits for the client's before
# dropping the socket. A client that never answers (one trickling bytes to hold a slot) must
# not keep it open: uvloop would wait 30 s, reading and discarding what comes meanwhile.
SHUTDOWN_TIMEOUT = 1.0


def make_self_signed(hostname: str, cert_file: Path, key_file: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.DNSName(hostname), x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=True, content_commitment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    make_private_dir(cert_file.parent)
    make_private_dir(key_file.parent)
    atomic_write(key_file, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), mode=0o600)
    atomic_write(cert_file, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def server_context(cert_file: Path, key_file: Path | None) -> ssl.SSLContext:
    """A server context with our certificate, shared by every TLS listener."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


async def close_stream(writer: asyncio.StreamWriter) -> None:
    """Close a connection, TLS or not, and drop it if the TLS goodbye takes longer than
    ``SHUTDOWN_TIMEOUT``: listeners bound it for implicit TLS, this also for STARTTLS."""
    writer.close()
    try:
        async with asyncio.timeout(SHUTDOWN_TIMEOUT):
            await writer.wait_closed()
    except (TimeoutError, ConnectionError, ssl.SSLError):
        writer.transport.abort()


def reload_certificate(ctx: ssl.SSLContext, cert_file: Path, key_file: Path | None) -> None:
    """Load a new certificate into the live context: new handshakes use it, open ones carry on.

    The files are read once and the pair is first tried in a throwaway context: loading a
    mismatched pair (say, read while a renewal is half-written) straight into the live context
    would leave it with the new certificate and the old key, and every handshake would fail.
    """
    # A key_file of None means the key is in cert_file (one file: the pair cannot diverge).
    cert = Path(cert_file).read_bytes()
    key = Path(key_file).read_bytes() if key_file is not None else b""
    with tempfile.TemporaryDirectory(prefix="mailstead-tls-") as tmp:
        snap_cert, snap_key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        snap_cert.touch(mode=0o600)
        snap_cert.write_bytes(cert)
        snap_key.touch(mode=0o600)
        snap_key.write_bytes(key or cert)
        server_context(snap_cert, snap_key)  # raises if the pair is unusable
        ctx.load_cert_chain(snap_cert, snap_key)


def describe_certificate(cert_file: Path) -> str:
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = ", ".join(str(n.value) for n in sans)
    except x509.ExtensionNotFound:
        names = cert.subject.rfc4514_string()
    return (f"{names}; issuer {cert.issuer.rfc4514_string()}; "
            f"expires {cert.not_valid_after_utc:%Y-%m-%d}")
