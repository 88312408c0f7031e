"""DKIM signing keys: generated per domain at init / domain add, kept in the data dir.

Layout: ``dkim/<domain>/<selector>.rsa.key`` (PKCS#8 PEM, 0600). The selector carries the
creation month so a later rotation can publish a new key beside the old one. Signing and
``mailstead dkim show`` build on this; the TXT value is split into 255-byte strings because a
single DNS character-string cannot be longer (RFC 1035 §3.3.14, RFC 6376 §3.6.2.2).
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from maildir.safeio import atomic_write, make_private_dir

RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class DKIMKey:
    domain: str
    selector: str
    algorithm: str  # "rsa"
    key_file: Path

    def public_key_b64(self) -> str:
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode("ascii")

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def txt_value(self) -> str:
        return f"v=DKIM1; k={self.algorithm}; p={self.public_key_b64()}"

    def txt_strings(self) -> list[str]:
        value = self.txt_value()
        return [value[i:i + 255] for i in range(0, len(value), 255)]


def generate(dkim_dir: Path, domain: str, now: datetime.date | None = None) -> DKIMKey:
    """Make a new RSA-2048 key for ``domain`` unless one with today's selector exists."""
    today = now or datetime.date.today()
    selector = f"ms{today:%Y%m}"
    key_file = dkim_dir / domain / f"{selector}.rsa.key"
    if not key_file.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        make_private_dir(key_file.parent)
        atomic_write(key_file, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), mode=0o600)
    return DKIMKey(domain, selector, "rsa", key_file)


def keys_for(dkim_dir: Path, domain: str) -> list[DKIMKey]:
    folder = dkim_dir / domain
    if not folder.is_dir():
        return []
    keys = []
    for path in sorted(folder.glob("*.*.key")):
        selector, algorithm, _ = path.name.rsplit(".", 2)
        keys.append(DKIMKey(domain, selector, algorithm, path))
    return keys
