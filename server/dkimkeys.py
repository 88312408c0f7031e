"""DKIM signing keys: generated per domain at init / domain add, kept in the data dir.

Layout: ``dkim/<domain>/<selector>.<algorithm>.key`` (PKCS#8 PEM, 0600), algorithm ``rsa``
(RSA-2048) or ``ed25519`` (RFC 8463). The selector carries the creation month so a later
rotation can publish a new key beside the old one. Signing (``server/dkimsign.py``) and
``mailstead dkim show`` build on this; the TXT value is split into 255-byte strings because a
single DNS character-string cannot be longer (RFC 1035 §3.3.14, RFC 6376 §3.6.2.2).
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from maildir.safeio import atomic_write, make_private_dir

RSA_BITS = 2048
ALGORITHMS = ("rsa", "ed25519")

# RFC 6376 §3.6.2.2: the TXT records at one selector name must be unique, so the Ed25519 key
# cannot share its selector with the RSA key; it gets the same monthly name plus this suffix.
_SELECTOR_SUFFIX = {"rsa": "", "ed25519": "e"}


@dataclass(frozen=True, slots=True)
class DKIMKey:
    domain: str
    selector: str
    algorithm: str  # "rsa" or "ed25519"
    key_file: Path

    def private_key(self) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        wanted = ed25519.Ed25519PrivateKey if self.algorithm == "ed25519" else rsa.RSAPrivateKey
        if not isinstance(key, wanted):
            raise ValueError(f"{self.key_file}: not an {self.algorithm} private key")
        return key

    def public_key_b64(self) -> str:
        public = self.private_key().public_key()
        if self.algorithm == "ed25519":
            # RFC 8463 §4.2: p= is the bare 32-byte public key, not a SubjectPublicKeyInfo.
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            # RFC 6376 §3.6.1: for k=rsa, p= is the DER SubjectPublicKeyInfo.
            raw = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(raw).decode("ascii")

    def dkimpy_private_key(self) -> bytes:
        """The private key in the form ``dkim.DKIM.sign`` takes for this algorithm.

        dkimpy parses RSA keys from PEM itself (PKCS#1 or PKCS#8), but for ed25519 it builds a
        ``nacl.signing.SigningKey`` from the base64 of the raw 32-byte private key (the seed).
        """
        if self.algorithm != "ed25519":
            self.private_key()  # fail here, naming the file, rather than inside dkimpy
            return self.key_file.read_bytes()
        raw = self.private_key().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())
        return base64.b64encode(raw)

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def txt_value(self) -> str:
        return f"v=DKIM1; k={self.algorithm}; p={self.public_key_b64()}"

    def txt_strings(self) -> list[str]:
        value = self.txt_value()
        return [value[i:i + 255] for i in range(0, len(value), 255)]


def _new_key_pem(algorithm: str) -> bytes:
    if algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_key(dkim_dir: Path, domain: str, today: datetime.date, algorithm: str) -> DKIMKey:
    """A key of ``algorithm`` with the selector of ``today``'s month, made unless that file
    exists. For rotation: publish its record first; the signer uses it after a reload."""
    selector = f"ms{today:%Y%m}{_SELECTOR_SUFFIX[algorithm]}"
    key_file = dkim_dir / domain / f"{selector}.{algorithm}.key"
    if not key_file.exists():
        make_private_dir(key_file.parent)
        atomic_write(key_file, _new_key_pem(algorithm), mode=0o600)
    return DKIMKey(domain, selector, algorithm, key_file)


def generate(dkim_dir: Path, domain: str, now: datetime.date | None = None, *,
             ed25519: bool = False) -> DKIMKey:
    """Make the domain's RSA-2048 key, and with ``ed25519`` its Ed25519 key (selector
    ``ms<YYYYMM>e``), each only if the domain has no key of that algorithm yet.

    Only if none: the signer uses the newest key, so a new key beside an old one would sign
    mail with a key whose DNS record nobody has published yet. Safe to call at every start.
    Returns the (newest) RSA key: it is the one every receiver can check.
    """
    today = now or datetime.date.today()
    existing = {k.algorithm: k for k in keys_for(dkim_dir, domain)}
    key = existing.get("rsa") or new_key(dkim_dir, domain, today, "rsa")
    if ed25519 and "ed25519" not in existing:
        new_key(dkim_dir, domain, today, "ed25519")
    return key


def keys_for(dkim_dir: Path, domain: str) -> list[DKIMKey]:
    """The domain's keys, sorted by file name (so by selector, oldest first, per algorithm)."""
    folder = dkim_dir / domain
    if not folder.is_dir():
        return []
    keys = []
    for path in sorted(folder.glob("*.*.key")):
        selector, algorithm, _ = path.name.rsplit(".", 2)
        if algorithm in ALGORITHMS:  # anything else is not ours to publish or sign with
            keys.append(DKIMKey(domain, selector, algorithm, path))
    return keys
