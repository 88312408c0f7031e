"""Passphrase encryption of backup archives: libsodium's secretstream, keyed by Argon2id.

No construction of our own: the key comes from ``crypto_pwhash`` (Argon2id) over the
passphrase and a random salt, and the stream is ``crypto_secretstream_xchacha20poly1305``,
which authenticates every chunk, numbers them (reordered or dropped chunks fail) and marks
the last one FINAL, so a truncated file is an error instead of a shorter backup.  Format::

    header   MAGIC (8) | version (1) | kdf id (1) | opslimit (u32) | memlimit (u64)
             | salt (16) | secretstream header (24)                    -- big-endian ints
    chunks   length (u32) | ciphertext of up to CHUNK plaintext bytes, ...
             the last one tagged FINAL; nothing may follow it

The whole header is the additional data of every chunk, so the KDF parameters cannot be
changed without the first chunk failing.  A wrong passphrase and a damaged first chunk look
the same to an AEAD; the error says so.
"""

from __future__ import annotations

import os
import struct

from nacl import bindings as sodium
from nacl.pwhash import argon2id

MAGIC = b"MSTDENC\x00"
VERSION = 1
KDF_ARGON2ID = 1
CHUNK = 256 * 1024
_HEADER = struct.Struct(">8sBBIQ16s24s")
_LENGTH = struct.Struct(">I")
_ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
_TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL

# About a second and 128 MiB on a small server: the backup may sit on someone else's disk,
# so guessing must be slow, but a nightly job beside a running mail server must not run the
# machine out of memory (libsodium's "moderate" wants 256 MiB).
OPSLIMIT = 4
MEMLIMIT = 128 * 1024 * 1024
# What a header may ask for: a crafted archive must not make restore allocate without bound.
_MAX_OPSLIMIT = 32
_MAX_MEMLIMIT = 1024 * 1024 * 1024


class BackupCryptError(ValueError):
    """The encrypted archive cannot be read: wrong passphrase, damage or truncation."""


def is_encrypted(head: bytes) -> bool:
    return head.startswith(MAGIC)


def _key(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    if not passphrase:
        raise BackupCryptError("the passphrase is empty")
    return argon2id.kdf(sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES, passphrase,
                        salt, opslimit=opslimit, memlimit=memlimit)


class EncryptingWriter:
    """A write-only binary file: what is written goes encrypted to ``raw``.

    ``close()`` writes the FINAL chunk and must be called (it does not close ``raw``).
    """

    def __init__(self, raw, passphrase: bytes, *, opslimit: int = OPSLIMIT,
                 memlimit: int = MEMLIMIT):
        self.raw = raw
        salt = os.urandom(argon2id.SALTBYTES)
        key = _key(passphrase, salt, opslimit, memlimit)
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        stream_header = sodium.crypto_secretstream_xchacha20poly1305_init_push(self._state, key)
        self._ad = _HEADER.pack(MAGIC, VERSION, KDF_ARGON2ID, opslimit, memlimit, salt,
                                stream_header)
        raw.write(self._ad)
        self._buf = bytearray()
        self.closed = False

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._buf += data
        while len(self._buf) >= CHUNK:
            self._push(bytes(self._buf[:CHUNK]), _TAG_MESSAGE)
            del self._buf[:CHUNK]
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        if not self.closed:
            self._push(bytes(self._buf), _TAG_FINAL)
            self._buf.clear()
            self.closed = True

    def _push(self, plain: bytes, tag: int) -> None:
        cipher = sodium.crypto_secretstream_xchacha20poly1305_push(
            self._state, plain, self._ad, tag)
        self.raw.write(_LENGTH.pack(len(cipher)) + cipher)


class DecryptingReader:
    """A read-only binary file over an encrypted stream ``raw``; raises BackupCryptError."""

    def __init__(self, raw, passphrase: bytes):
        self.raw = raw
        header = _read_exactly(raw, _HEADER.size)
        if len(header) < _HEADER.size:
            raise BackupCryptError("the archive is truncated (incomplete encryption header)")
        magic, version, kdf, opslimit, memlimit, salt, stream_header = _HEADER.unpack(header)
        if magic != MAGIC:
            raise BackupCryptError("not an encrypted mailstead backup")
        if version != VERSION or kdf != KDF_ARGON2ID:
            raise BackupCryptError(f"unsupported encryption format {version}/{kdf} "
                                   "(made by a newer mailstead?)")
        if not (argon2id.OPSLIMIT_MIN <= opslimit <= _MAX_OPSLIMIT
                and argon2id.MEMLIMIT_MIN <= memlimit <= _MAX_MEMLIMIT):
            raise BackupCryptError("the encryption header asks for unreasonable "
                                   "key-derivation parameters; the archive is damaged")
        key = _key(passphrase, salt, opslimit, memlimit)
        self._ad = header
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(self._state, stream_header, key)
        self._buf = b""
        self._pos = 0
        self._chunks = 0
        self._final = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        out = []
        while size < 0 or size > 0:
            if self._pos == len(self._buf):
                if self._final:
                    break
                self._pull()
                continue
            take = self._buf[self._pos:] if size < 0 else self._buf[self._pos:self._pos + size]
            self._pos += len(take)
            out.append(take)
            if size > 0:
                size -= len(take)
        return b"".join(out)

    def _pull(self) -> None:
        prefix = _read_exactly(self.raw, _LENGTH.size)
        if len(prefix) < _LENGTH.size:
            raise BackupCryptError("the archive is truncated (the final chunk is missing)")
        (length,) = _LENGTH.unpack(prefix)
        if not _ABYTES <= length <= CHUNK + _ABYTES:
            raise BackupCryptError("the archive is damaged (bad chunk length)")
        cipher = _read_exactly(self.raw, length)
        if len(cipher) < length:
            raise BackupCryptError("the archive is truncated (incomplete chunk)")
        try:
            plain, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(
                self._state, cipher, self._ad)
        except Exception:  # nacl raises its own RuntimeError/CryptoError variants
            if self._chunks == 0:
                raise BackupCryptError("cannot decrypt: wrong passphrase "
                                       "(or the archive is damaged)") from None
            raise BackupCryptError(f"the archive is damaged (chunk {self._chunks + 1} "
                                   "fails authentication)") from None
        self._chunks += 1
        self._buf, self._pos = plain, 0
        if tag == _TAG_FINAL:
            self._final = True
            if self.raw.read(1):
                raise BackupCryptError("the archive is damaged (data after the final chunk)")


def _read_exactly(f, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = f.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)
