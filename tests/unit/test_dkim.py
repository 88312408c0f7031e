"""DKIM keys (server/dkimkeys.py) and signing (server/dkimsign.py), checked the way a receiver
checks: dkimpy verifies with the public key fetched from DNS (the loopback test server)."""
from __future__ import annotations

import base64
import datetime
import importlib.util
import re
import shutil
import stat

import dkim
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization
from dkim.util import parse_tag_value

from server import dkimkeys, dkimsign
from server.dkimsign import DKIMSigner
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer

# dkimpy signs and verifies Ed25519 through PyNaCl (its "ed25519" extra).
HAVE_NACL = importlib.util.find_spec("nacl") is not None
needs_nacl = pytest.mark.skipif(not HAVE_NACL, reason="PyNaCl not installed (dkimpy[ed25519])")
ALGORITHMS = ["rsa-sha256", pytest.param("ed25519-sha256", marks=needs_nacl)]

DOMAIN = "example.test"
JAN, FEB = datetime.date(2025, 1, 15), datetime.date(2025, 2, 3)

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@remote.test\r\n"
    b"Subject: The quarterly numbers are in and they look rather good this time\r\n"
    b"Date: Wed, 15 Jan 2025 10:00:00 +0000\r\n"
    b"Message-ID: <20250115100000.1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"the numbers are attached.\r\n"
)


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    """RSA (ms202501) and Ed25519 (ms202501e) keys, made once: RSA keygen takes ~100 ms."""
    path = tmp_path_factory.mktemp("dkim")
    dkimkeys.generate(path, DOMAIN, JAN, ed25519=True)
    return path


def publish(server: DNSTestServer, dkim_dir) -> None:
    for key in dkimkeys.keys_for(dkim_dir, DOMAIN):
        server.set(key.record_name, "TXT", key.txt_value())


@pytest.fixture(scope="module")
def dns_server(keydir):
    with DNSTestServer(DEFAULT_ZONE) as server:
        publish(server, keydir)
        yield server
    assert not server.errors, server.errors


@pytest.fixture(scope="module")
def dnsfunc(dns_server):
    """dkimpy's TXT lookup hook, answered by the loopback server and nothing else."""
    resolver = dns_server.resolver()

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode("ascii"), "TXT", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(answer.rrset[0].strings) if answer.rrset else None

    return txt


@pytest.fixture(scope="module")
def signer(keydir):
    return DKIMSigner(keydir, ed25519=HAVE_NACL)


def signatures(message: bytes) -> list[dict[bytes, bytes]]:
    return [parse_tag_value(value) for name, value in dkim.DKIM(message).headers
            if name.lower() == b"dkim-signature"]


def h_tag(sig: dict[bytes, bytes]) -> list[str]:
    return re.sub(rb"\s+", b"", sig[b"h"]).decode().split(":")


@pytest.fixture(scope="module")
def valid(dnsfunc):
    def check(message: bytes, algorithm: str = "rsa-sha256") -> bool:
        """Does the signature with a=algorithm verify? A body hash mismatch is a plain no."""
        algs = [s[b"a"].decode() for s in signatures(message)]
        try:
            return dkim.DKIM(message).verify(idx=algs.index(algorithm), dnsfunc=dnsfunc)
        except dkim.ValidationError:
            return False

    return check


# ------------------------------------------------------------------ keys

def test_generate_rsa_only_by_default(tmp_path):
    key = dkimkeys.generate(tmp_path, DOMAIN, JAN)
    assert (key.selector, key.algorithm) == ("ms202501", "rsa")
    assert [p.name for p in (tmp_path / DOMAIN).iterdir()] == ["ms202501.rsa.key"]
    assert stat.S_IMODE((tmp_path / DOMAIN).stat().st_mode) == 0o700


def test_generate_ed25519_beside_rsa(keydir):
    before = {p.name: p.read_bytes() for p in (keydir / DOMAIN).iterdir()}
    key = dkimkeys.generate(keydir, DOMAIN, JAN, ed25519=True)  # both exist: nothing changes
    assert (key.selector, key.algorithm) == ("ms202501", "rsa")
    assert {p.name: p.read_bytes() for p in (keydir / DOMAIN).iterdir()} == before
    assert sorted(before) == ["ms202501.rsa.key", "ms202501e.ed25519.key"]
    for path in (keydir / DOMAIN).iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    keys = dkimkeys.keys_for(keydir, DOMAIN)
    assert [(k.selector, k.algorithm) for k in keys] == [("ms202501", "rsa"),
                                                         ("ms202501e", "ed25519")]
    # RFC 6376 §3.6.2.2: one key record per selector name, so the two names must differ.
    assert len({k.record_name for k in keys}) == 2


def test_ed25519_txt_value_is_raw_public_key(keydir):
    key = dkimkeys.keys_for(keydir, DOMAIN)[1]
    assert key.record_name == "ms202501e._domainkey.example.test"
    prefix = "v=DKIM1; k=ed25519; p="
    assert key.txt_value().startswith(prefix)
    raw = base64.b64decode(key.txt_value()[len(prefix):])
    public = key.private_key().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw == public and len(raw) == 32  # RFC 8463 §4.2
    assert key.txt_strings() == [key.txt_value()]  # short enough for one string


def test_rsa_txt_strings_reassemble(keydir, dns_server):
    key = dkimkeys.keys_for(keydir, DOMAIN)[0]
    strings = key.txt_strings()
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == key.txt_value()
    assert key.txt_value().startswith("v=DKIM1; k=rsa; p=MIIBIjAN")  # DER SPKI, 2048 bit
    answer = dns_server.resolver().resolve(key.record_name, "TXT")
    assert [s.decode() for s in answer.rrset[0].strings] == strings


def test_dkimpy_private_key_forms(keydir):
    rsa_key, ed_key = dkimkeys.keys_for(keydir, DOMAIN)
    assert rsa_key.dkimpy_private_key() == rsa_key.key_file.read_bytes()
    assert len(base64.b64decode(ed_key.dkimpy_private_key(), validate=True)) == 32


def test_keys_for_skips_unknown_files(tmp_path):
    assert dkimkeys.keys_for(tmp_path, DOMAIN) == []
    (tmp_path / DOMAIN).mkdir()
    (tmp_path / DOMAIN / "old.dsa.key").write_text("x")
    assert dkimkeys.keys_for(tmp_path, DOMAIN) == []


# ------------------------------------------------------------------ signing

@needs_nacl
def test_rsa_then_ed25519_both_verify(signer, dnsfunc):
    fields = signer.sign(MESSAGE, DOMAIN)
    signed = fields + MESSAGE
    sigs = signatures(signed)
    assert [(s[b"a"], s[b"s"]) for s in sigs] == [(b"rsa-sha256", b"ms202501"),
                                                   (b"ed25519-sha256", b"ms202501e")]
    for idx in (0, 1):
        assert dkim.DKIM(signed).verify(idx=idx, dnsfunc=dnsfunc)
    assert dkim.verify(signed, dnsfunc=dnsfunc)


def test_rsa_only_unless_enabled(keydir, valid):
    signed = DKIMSigner(keydir).sign(MESSAGE, DOMAIN) + MESSAGE
    assert [s[b"a"] for s in signatures(signed)] == [b"rsa-sha256"]
    assert valid(signed)


def test_tags_and_folding(signer):
    fields = signer.sign(MESSAGE, DOMAIN)
    assert fields.startswith(b"DKIM-Signature: ") and fields.endswith(b"\r\n")
    lines = fields.split(b"\r\n")[:-1]
    assert b"\n" not in b"".join(lines) and b"\r" not in b"".join(lines)
    assert all(len(line) <= 78 for line in lines)  # RFC 5322 §2.1.1
    for sig in signatures(fields + MESSAGE):
        assert sig[b"c"] == b"relaxed/relaxed" and sig[b"d"] == b"example.test"
        assert abs(int(sig[b"t"]) - datetime.datetime.now().timestamp()) < 60
        assert b"x" not in sig and b"l" not in sig
        # From and the single-instance fields once more than they occur (Cc: absent, once).
        assert h_tag(sig) == ["from", "from", "reply-to", "subject", "subject", "date", "date",
                              "to", "to", "cc", "message-id", "message-id",
                              "mime-version", "mime-version", "content-type", "content-type"]


def test_signed_if_present_and_every_instance():
    headers = [(b"From", b""), (b"Received", b""), (b"List-Id", b""), (b"References", b""),
               (b"references", b""), (b"Sender", b""), (b"Bcc", b""), (b"X-Other", b"")]
    names = dkimsign.headers_to_sign(headers)
    assert names.count(b"references") == 2 and names.count(b"list-id") == 1
    assert b"sender" in names and b"list-post" not in names
    assert not {b"received", b"bcc", b"x-other"} & set(names)  # RFC 6376 §5.4: never these


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_relaxed_survives_refolding_and_whitespace(signer, valid, algorithm):
    signed = signer.sign(MESSAGE, DOMAIN) + MESSAGE
    assert valid(signed, algorithm)
    mangled = (signed
               .replace(b"Subject: The quarterly numbers are in and",
                        b"subject:   The quarterly numbers are in\r\n\tand")
               .replace(b"To: bob@remote.test\r\n", b"To: bob@remote.test  \r\n")
               .replace(b"Hello Bob,\r\n", b"Hello   Bob, \t\r\n")
               + b"\r\n\r\n")
    received = b"Received: from mail.example.test by mx.remote.test; Wed, 15 Jan 2025\r\n"
    assert valid(received + mangled, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("change", [
    pytest.param(lambda m: m.replace(b"attached", b"attacked"), id="body"),
    pytest.param(lambda m: m.replace(b"rather good", b"rather bad"), id="subject"),
    pytest.param(lambda m: b"From: Mallory <ceo@example.test>\r\n" + m, id="from-on-top"),
    pytest.param(lambda m: m.replace(b"\r\n\r\n", b"\r\nFrom: ceo@example.test\r\n\r\n", 1),
                 id="from-at-bottom"),
    pytest.param(lambda m: b"Subject: Urgent: wire money\r\n" + m, id="second-subject"),
    pytest.param(lambda m: b"Cc: eve@remote.test\r\n" + m, id="added-cc"),
    pytest.param(lambda m: b"Reply-To: eve@remote.test\r\n" + m, id="added-reply-to"),
])
def test_tampering_fails(signer, valid, algorithm, change):
    signed = signer.sign(MESSAGE, DOMAIN) + MESSAGE
    assert valid(signed, algorithm)
    assert not valid(change(signed), algorithm)


def test_unsigned_header_may_be_added(signer, valid):
    signed = signer.sign(MESSAGE, DOMAIN) + MESSAGE
    assert valid(b"X-Spam-Score: 0\r\n" + signed)


def test_no_from_is_an_error(signer):
    with pytest.raises(ValueError, match="From"):
        signer.sign(MESSAGE.replace(b"From: Alice <alice@example.test>\r\n", b""), DOMAIN)


def test_unparsable_header_is_an_error(signer):
    with pytest.raises(ValueError, match="cannot DKIM-sign"):
        signer.sign(b"not a header\r\n" + MESSAGE, DOMAIN)


def test_no_key_signs_nothing(signer):
    assert signer.sign(MESSAGE, "remote.test") == b""


def test_domain_case_is_ignored(signer, valid):
    signed = signer.sign(MESSAGE, "Example.TEST") + MESSAGE
    assert signatures(signed)[0][b"d"] == b"example.test" and valid(signed)


# ------------------------------------------------------------------ cache and reload

def test_keys_are_cached(keydir, tmp_path, valid):
    shutil.copytree(keydir, tmp_path / "dkim")
    s = DKIMSigner(tmp_path / "dkim", ed25519=HAVE_NACL)
    first = s.sign(MESSAGE, DOMAIN)
    shutil.rmtree(tmp_path / "dkim")  # the second message must not need the files
    second = s.sign(MESSAGE, DOMAIN)
    assert second.count(b"DKIM-Signature:") == first.count(b"DKIM-Signature:") >= 1
    assert valid(second + MESSAGE)
    s.reload()
    assert s.sign(MESSAGE, DOMAIN) == b""  # reload really rereads


def test_reload_picks_up_newest_key(keydir, tmp_path, dns_server, valid):
    shutil.copytree(keydir, tmp_path / "dkim")
    s = DKIMSigner(tmp_path / "dkim")
    assert signatures(s.sign(MESSAGE, DOMAIN) + MESSAGE)[0][b"s"] == b"ms202501"
    # generate() never adds a second key of one algorithm (see its docstring); a rotation
    # makes the new key explicitly.
    assert dkimkeys.generate(tmp_path / "dkim", DOMAIN, FEB).selector == "ms202501"
    new = dkimkeys.new_key(tmp_path / "dkim", DOMAIN, FEB, "rsa")
    dns_server.set(new.record_name, "TXT", new.txt_value())
    assert signatures(s.sign(MESSAGE, DOMAIN) + MESSAGE)[0][b"s"] == b"ms202501"  # cached
    s.reload()
    signed = s.sign(MESSAGE, DOMAIN) + MESSAGE
    assert [x[b"s"] for x in signatures(signed)] == [b"ms202502"]  # newest of two RSA keys
    assert valid(signed)


@needs_nacl
def test_ed25519_enabled_but_no_ed25519_key(keydir, tmp_path, valid):
    (tmp_path / DOMAIN).mkdir()
    shutil.copy(keydir / DOMAIN / "ms202501.rsa.key", tmp_path / DOMAIN)
    signed = DKIMSigner(tmp_path, ed25519=True).sign(MESSAGE, DOMAIN) + MESSAGE
    assert [s[b"a"] for s in signatures(signed)] == [b"rsa-sha256"] and valid(signed)


def test_ed25519_without_pynacl_fails_at_startup(keydir, monkeypatch):
    monkeypatch.setattr(dkimsign.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="PyNaCl"):
        DKIMSigner(keydir, ed25519=True)
    DKIMSigner(keydir)  # RSA alone needs nothing more


def test_openssl_rsa_signature_is_dkimpys_byte_for_byte(keydir, monkeypatch):
    """server/dkimrsa.py swaps dkimpy's Python RSA for OpenSSL; PKCS#1 v1.5 is deterministic,
    so with the clock fixed both give the same field, and dkimpy's own path is untouched."""
    from server.dkimrsa import PreparedKey

    monkeypatch.setattr(dkim.time, "time", lambda: 1_800_000_000)
    [key] = [k for k in dkimkeys.keys_for(keydir, DOMAIN) if k.algorithm == "rsa"]
    pem = key.dkimpy_private_key()
    message = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: same\r\n\r\nbody\r\n"
    include = [b"from", b"to", b"subject"]
    python_rsa = []
    real = dkim.crypto.rsa_decrypt
    monkeypatch.setattr(dkim.crypto, "rsa_decrypt",
                        lambda *a: python_rsa.append(1) or real(*a))
    plain = dkim.DKIM(message).sign(b"s1", b"example.com", pem, include_headers=include)
    assert python_rsa == [1]
    fast = dkim.DKIM(message).sign(b"s1", b"example.com", PreparedKey(pem),
                                   include_headers=include)
    assert python_rsa == [1]  # OpenSSL signed it
    assert fast == plain and b"b=" in fast
    for algorithm, name in ((b"rsa-sha1", "sha1"),):
        plain = dkim.DKIM(message).sign(b"s1", b"example.com", pem, include_headers=include,
                                        signature_algorithm=algorithm)
        fast = dkim.DKIM(message).sign(b"s1", b"example.com", PreparedKey(pem),
                                       include_headers=include, signature_algorithm=algorithm)
        assert fast == plain, name
    with pytest.raises(ValueError):
        PreparedKey(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
