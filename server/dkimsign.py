"""DKIM-signing of outgoing mail: rsa-sha256 (RFC 6376) and, if enabled, ed25519-sha256 (RFC 8463).

The sender calls ``DKIMSigner.sign(message, domain)`` for a message from a local domain and
prepends what it returns. Keys come from ``server/dkimkeys.py`` (``dkim/<domain>/``); dkimpy does
the canonicalisation and builds the field, OpenSSL makes the RSA signature (``dkimrsa.py``),
nothing here is hand-rolled.

A domain with keys of both algorithms gets two signatures, RSA first. A verifier that does not
know ed25519-sha256 (RFC 8463 §3) ignores that signature (RFC 6376 §6.1.1) and checks the RSA
one, so adding Ed25519 never costs a receiver a valid signature.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dkim

from server import dkimkeys
from server.dkimrsa import PreparedKey

# RFC 6376 §3.5 (h=) and §5.4.1: the fields worth protecting; the list is ours rather than
# dkimpy's defaults, which differ between versions. In h= order; each is signed once per
# instance the message has.
SIGNED_HEADERS = (
    b"from", b"reply-to", b"subject", b"date", b"to", b"cc",
    b"resent-date", b"resent-from", b"resent-to", b"resent-cc",
    b"in-reply-to", b"references",
    b"list-id", b"list-help", b"list-unsubscribe", b"list-subscribe", b"list-post",
    b"list-owner", b"list-archive",
    b"message-id", b"mime-version", b"content-type", b"content-transfer-encoding",
    b"content-id", b"content-description", b"sender",
)

# Over-signed: named once more than they occur (RFC 6376 §5.4.2: a name listed more often than
# the field occurs signs a null field; RFC 6376 §8.15). Adding one more instance, or the first
# one where the message had none, then breaks the signature. Verifiers take instances from the
# bottom (§5.4.2) while many mail readers show the top one, so without this anyone relaying the
# message could put a second From or Subject above ours and still pass DKIM (and so DMARC).
# These are the fields a reader sees or that steer how the body is shown; RFC 5322 §3.6 and
# RFC 2045 allow each at most once, so no honest relay adds another.
OVERSIGNED_HEADERS = frozenset({
    b"from", b"subject", b"date", b"to", b"cc", b"reply-to", b"message-id",
    b"mime-version", b"content-type",
})

# RFC 6376 §3.4.2 / §3.4.4: relaxed for both, so a relay that refolds a header, changes the
# case of a field name or trims trailing whitespace does not break the signature.
CANONICALIZATION = (b"relaxed", b"relaxed")

# dkimkeys algorithm -> a= tag (RFC 6376 §3.3, RFC 8463 §3).
_SIGNATURE_ALGORITHM = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


def _prepared(algorithm: str, private: bytes) -> bytes:
    """RSA keys parsed once and signed with by OpenSSL (``server/dkimrsa.py``)."""
    return PreparedKey(private) if algorithm == "rsa" else private


@dataclass(frozen=True, slots=True)
class _SigningKey:
    selector: bytes
    algorithm: bytes  # a= value
    private: bytes    # as dkimpy takes it, see DKIMKey.dkimpy_private_key


def headers_to_sign(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The h= list for a message with these (name, value) header fields."""
    count = Counter(name.lower() for name, _ in headers)
    names: list[bytes] = []
    for name in SIGNED_HEADERS:
        names += [name] * (count[name] + (name in OVERSIGNED_HEADERS))
    return names


class DKIMSigner:
    """Signs outgoing messages with each local domain's newest key per algorithm.

    Keys are read on a domain's first message and kept in memory: signing happens once per
    outgoing message and must not touch the disk. ``reload()`` (SIGHUP) forgets them, so a
    rotated or replaced key is used from the next message on.
    """

    def __init__(self, dkim_dir: Path, *, ed25519: bool = False):
        # dkimpy signs and verifies Ed25519 through PyNaCl (its "ed25519" extra) and fails only
        # when asked to sign; a config that asks for Ed25519 without it must fail at startup.
        if ed25519 and importlib.util.find_spec("nacl") is None:
            raise RuntimeError("[dkim] ed25519 = true needs PyNaCl, which dkimpy uses for "
                               "Ed25519 (pip install 'dkimpy[ed25519]')")
        self.dkim_dir = Path(dkim_dir)
        self.algorithms = ("rsa", "ed25519") if ed25519 else ("rsa",)
        self._keys: dict[str, tuple[_SigningKey, ...]] = {}

    def reload(self) -> None:
        """Forget the cached keys; each domain's keys are read again at its next message."""
        self._keys = {}  # one assignment: a sign() running meanwhile keeps the old dict

    def _load(self, domain: str) -> tuple[_SigningKey, ...]:
        keys = self._keys.get(domain)
        if keys is not None:
            return keys
        newest: dict[str, dkimkeys.DKIMKey] = {}
        # keys_for sorts by selector, which starts with the creation month: the last wins.
        for key in dkimkeys.keys_for(self.dkim_dir, domain):
            newest[key.algorithm] = key
        keys = tuple(
            _SigningKey(newest[alg].selector.encode("ascii"), _SIGNATURE_ALGORITHM[alg],
                        _prepared(alg, newest[alg].dkimpy_private_key()))
            for alg in self.algorithms if alg in newest)
        # A domain without keys is not cached: one stat per message for a domain that should
        # not be signed anyway, and a domain added while running is signed from its first
        # message instead of after the next SIGHUP.
        if keys:
            self._keys[domain] = keys
        return keys

    def sign(self, message: bytes, domain: str) -> bytes:
        """The DKIM-Signature field(s) to prepend to ``message`` (CRLF, folded), or b"".

        b"" when ``domain`` has no key. Raises ValueError for a message that cannot be signed:
        no From field (RFC 6376 §5.4: From must be signed) or an unparsable header section.
        """
        domain = domain.lower().rstrip(".")
        keys = self._load(domain)
        if not keys:
            return b""
        try:
            msg = dkim.DKIM(message, linesep=b"\r\n")
        except dkim.MessageFormatError as err:
            raise ValueError(f"cannot DKIM-sign this message: {err}") from None
        if not any(name.lower() == b"from" for name, _ in msg.headers):
            raise ValueError("cannot DKIM-sign a message without a From header field "
                             "(RFC 6376 §5.4)")
        include = headers_to_sign(msg.headers)
        d = domain.encode("ascii")  # RFC 8616 §4: d= holds A-labels, as domains are stored
        # dkimpy adds t= (RFC 6376 §3.5) itself and x= only if asked: signatures never expire,
        # so a message retried from the queue for days still verifies.
        return b"".join(
            msg.sign(key.selector, d, key.private, signature_algorithm=key.algorithm,
                     canonicalize=CANONICALIZATION, include_headers=include)
            for key in keys)
