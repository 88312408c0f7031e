"""RSA signing for dkimpy by OpenSSL (``cryptography``) instead of Python integers.

dkimpy signs with its own RSA (``dkim.crypto.rsa_decrypt``: ``pow`` on Python ints, about
5 ms per RSA-2048 signature on this class of machine, with the GIL held, so the whole daemon
waits) and parses the PEM key again for every message. ``PreparedKey`` is the PEM bytes
dkimpy expects plus the key parsed once by ``cryptography``; the two hooks installed below
notice it and hand the work to OpenSSL. Any other key goes through dkimpy's own code
unchanged. RSASSA-PKCS1-v1_5 is deterministic (RFC 8017 §8.2), so the signature is the same
byte for byte -- tests/unit/test_dkim.py compares the two.
"""

from __future__ import annotations

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

_HASHES = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}


class PreparedKey(bytes):
    """PEM bytes (what ``dkim.DKIM.sign`` takes) carrying the parsed private key."""

    key: rsa.RSAPrivateKey

    def __new__(cls, pem: bytes) -> PreparedKey:
        self = super().__new__(cls, pem)
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("not an RSA private key")
        self.key = key
        return self


class _OpenSSLSigner:
    """What dkimpy's ``parse_pem_private_key`` returns for a ``PreparedKey``."""

    __slots__ = ("key",)

    def __init__(self, key: rsa.RSAPrivateKey):
        self.key = key

    def sign(self, digest: bytes, hash_name: str) -> bytes:
        algorithm = _HASHES[hash_name.lower()]()
        return self.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(algorithm))


_parse = dkim.parse_pem_private_key
_sign = dkim.RSASSA_PKCS1_v1_5_sign


def _parse_pem_private_key(data):
    if isinstance(data, PreparedKey):
        return _OpenSSLSigner(data.key)
    return _parse(data)


def _rsassa_pkcs1_v1_5_sign(hash_obj, private_key):
    if isinstance(private_key, _OpenSSLSigner):
        return private_key.sign(hash_obj.digest(), hash_obj.name)
    return _sign(hash_obj, private_key)


# dkim/__init__.py imported both names from dkim.crypto; its sign() and gen_header() look them
# up in its own module namespace, which is where they are replaced.
dkim.parse_pem_private_key = _parse_pem_private_key
dkim.RSASSA_PKCS1_v1_5_sign = _rsassa_pkcs1_v1_5_sign
