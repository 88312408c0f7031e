"""Pebble, Let's Encrypt's test CA, on loopback: a real RFC 8555 server for the ACME tests.

    with DNSTestServer(DEFAULT_ZONE) as dns, Pebble(tmp_path, dns.nameserver,
                                                     http_port, tls_port) as pebble:
        client = ACMEClient(pebble.directory, state, ca_bundle=str(pebble.api_ca))
        ... verify issued chains against pebble.roots() ...

Debian's pebble package has no test certificates, so the fixture makes a CA and a
localhost/127.0.0.1 certificate for Pebble's own HTTPS API (``api_ca`` is the CA to trust).
Pebble's validation authority resolves names with ``dns_server`` only (our test DNS server)
and dials ``http_port`` for http-01 and ``tls_port`` for tls-alpn-01, on whatever address the
name resolves to. Everything listens on 127.0.0.1; the state (config, certificates, log
``pebble.log``) lives in ``root/pebble``. Pebble makes a new root CA at every start: verify
chains against ``roots()``, fetched from its management port.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from maildir.safeio import atomic_write, make_private_dir
from tests.support.ports import free_ports

# No random 0-15 s sleep before validating, no random badNonce (default 5 %), and no reuse of
# valid authorizations (default 50 %: a test could pass without its responder being asked).
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
START_TIMEOUT = 10.0


def pebble_available() -> bool:
    return shutil.which("pebble") is not None


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _api_certificates(state: Path) -> tuple[Path, Path, Path]:
    """(CA, server certificate, server key) for Pebble's HTTPS API, made once per state dir."""
    ca_file, cert_file, key_file = (state / f"api-{n}.pem" for n in ("ca", "cert", "key"))
    if cert_file.exists():
        return ca_file, cert_file, key_file
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble API test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    atomic_write(ca_file, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    atomic_write(key_file, _pem_key(key), 0o600)
    atomic_write(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return ca_file, cert_file, key_file


class Pebble:
    __test__ = False  # not a pytest test class

    def __init__(self, root: Path, dns_server: str, http_port: int, tls_port: int, *,
                 eab_keys: dict[str, str] | None = None, blocklist: tuple[str, ...] = ()):
        """``eab_keys`` (kid -> base64url HMAC key) makes external account binding required;
        orders for names under ``blocklist`` are refused (rejectedIdentifier)."""
        self.state = Path(root) / "pebble"
        self.dns_server, self.http_port, self.tls_port = dns_server, http_port, tls_port
        self.eab_keys, self.blocklist = eab_keys, list(blocklist)
        self.port = self.mgmt_port = 0
        self.api_ca = self.state / "api-ca.pem"
        self.log_file = self.state / "pebble.log"
        self._proc: subprocess.Popen | None = None

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _get(self, url: str, timeout: float = 5) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.api_ca))
        # No proxy handler: an https_proxy from the environment must not see loopback tests.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
        with opener.open(url, timeout=timeout) as response:
            return response.read()

    def roots(self) -> bytes:
        """Pebble's current root certificate (PEM), to verify the chains it issues."""
        return self._get(f"https://127.0.0.1:{self.mgmt_port}/roots/0")

    def start(self) -> Pebble:
        if self._proc is not None:
            raise RuntimeError("already started")
        make_private_dir(self.state)
        _, cert_file, key_file = _api_certificates(self.state)
        # The ports are free when picked but Pebble binds them a moment later: if another
        # process took one meanwhile, Pebble exits and we try again with new ones.
        for attempt in range(3):
            if attempt or not self.port:  # a restart keeps its ports (and directory URL)
                self.port, self.mgmt_port = free_ports(2)
            config = {"pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
                "certificate": str(cert_file), "privateKey": str(key_file),
                "httpPort": self.http_port, "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": bool(self.eab_keys),
                "externalAccountMACKeys": self.eab_keys or {},
                "domainBlocklist": self.blocklist,
            }}
            config_file = self.state / "pebble-config.json"
            atomic_write(config_file, json.dumps(config, indent=2), 0o600)
            with open(self.log_file, "ab") as log:
                self._proc = subprocess.Popen(
                    ["pebble", "-config", str(config_file), "-dnsserver", self.dns_server],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, **PEBBLE_ENV}, cwd=self.state)
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"pebble did not start; see {self.log_file}:\n"
                           + self.log_file.read_text(errors="replace")[-2000:])

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                self._get(self.directory, timeout=1)
                self._get(f"https://127.0.0.1:{self.mgmt_port}/roots/0", timeout=1)
                return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the process we started (by its handle, never by name). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
