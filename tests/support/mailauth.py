"""Helpers for the inbound trust tests: test DKIM keys, signing as a remote sender would, and
a config pointing at the loopback DNS server.

Keys are made here (RSA-2048 once per process: key generation is the slow part) and their
records published on a ``DNSTestServer`` by the test; signing is dkimpy's, the same library a
real sender might use, so a test never checks our verifier against our own signer only.
"""

from __future__ import annotations

import asyncio
import base64
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from server.config import Config, parse_config

HOSTNAME = "mail.example.test"

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: ann@example.test\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Date: Wed, 15 Jan 2025 10:00:00 +0000\r\n"
    b"Message-ID: <20250115100000.1@sender.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Ann,\r\n"
    b"\r\n"
    b"the numbers are attached.\r\n"
)

SIGNED = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
          b"content-type"]


def message(from_addr: str = "alice@sender.test", body: bytes = b"Hello Ann.\r\n",
            extra: bytes = b"") -> bytes:
    return (extra + f"From: Alice <{from_addr}>\r\nTo: ann@example.test\r\n"
            f"Subject: test\r\nMessage-ID: <{id(body)}@x>\r\n\r\n".encode() + body)


def rsa_key(bits: int = 2048) -> tuple[bytes, str]:
    """(PEM private key, DKIM TXT value); one key per size for the whole test run."""
    return _rsa_key(bits)  # functools.cache keys rsa_key() and rsa_key(2048) apart


@functools.cache
def _rsa_key(bits: int) -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


@functools.cache
def ed25519_key() -> tuple[bytes, str]:
    """(dkimpy's Ed25519 private key form: base64 of the 32-byte seed, TXT value)."""
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    return base64.b64encode(seed), f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"


def sign(msg: bytes, domain: str, selector: str = "sel", *, algorithm: str = "rsa",
         bits: int = 2048) -> bytes:
    """``msg`` with a DKIM-Signature from ``domain`` prepended (relaxed/relaxed)."""
    if algorithm == "ed25519":
        private, alg = ed25519_key()[0], b"ed25519-sha256"
    else:
        private, alg = rsa_key(bits)[0], b"rsa-sha256" if algorithm == "rsa" else algorithm
    sig = dkim.sign(msg, selector.encode(), domain.encode(), private, signature_algorithm=alg,
                    canonicalize=(b"relaxed", b"relaxed"), include_headers=SIGNED)
    return sig + msg


def publish_key(dns, domain: str, selector: str = "sel", *, algorithm: str = "rsa",
                bits: int = 2048) -> None:
    txt = ed25519_key()[1] if algorithm == "ed25519" else rsa_key(bits)[1]
    dns.set(f"{selector}._domainkey.{domain}", "TXT", txt)


def make_config(nameserver: str, tmp: Path | str = "/nonexistent", timeout: float = 2.0,
                **inbound) -> Config:
    lines = [f"{k} = {_toml(v)}" for k, v in inbound.items()]
    text = (f'[server]\nhostname = "{HOSTNAME}"\ndata_dir = "{tmp}"\n'
            f'[dns]\nnameservers = ["{nameserver}"]\ntimeout = {timeout}\n'
            "[inbound]\n" + "\n".join(lines) + "\n")
    return parse_config(text, Path(tmp) / "mailstead.toml")


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def run(coro_fn, *args, **kwargs):
    """Run ``await coro_fn(*args, executor=..., **kwargs)`` in a fresh event loop."""

    async def main():
        with ThreadPoolExecutor(max_workers=4) as executor:
            return await coro_fn(*args, executor=executor, **kwargs)

    return asyncio.run(main())
