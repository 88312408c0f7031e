"""The certificate manager's decisions: when to order, what to drop, how long to back off.

The CA here is a script (the real one, Pebble, is in tests/e2e/test_acme.py): it answers each
order from a list of outcomes and issues real certificates with the lifetime asked, so the
manager's files, reload and schedule are the real ones.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import stat
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.acme.client import ACMEError, Issued
from server.acme.manager import (
    BACKOFF,
    CertificateManager,
    acme_file,
    describe,
    renewal_time,
    tls_files,
    wanted_names,
)
from server.acme.responder import ChallengeResponder
from server.config import parse_config
from server.tlscert import make_self_signed, server_context

HOST = "mail.example.test"
DAY = 86400.0


def make_issued(names, lifetime_days=90.0, age_days=0.0, key_pem=None) -> Issued:
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=age_days)
    key = (serialization.load_pem_private_key(key_pem, None) if key_pem
           else ec.generate_private_key(ec.SECP256R1()))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scripted CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=lifetime_days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), key_pem, tuple(names),
                  cert.not_valid_before_utc, cert.not_valid_after_utc, "CN=scripted CA")


class ScriptedCA:
    """Each issue() takes the next outcome: an exception to raise or a lifetime in days."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.orders: list[tuple[list[str], str]] = []
        self.keys: list[bytes | None] = []
        self.ari: tuple[float | None, float] = (None, time.time() + 6 * 3600)

    def __call__(self, config):  # the manager's client_factory
        return self

    def issue(self, names, challenge, responder, key_pem=None):
        self.orders.append((list(names), challenge))
        self.keys.append(key_pem)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return make_issued(names, outcome, key_pem=key_pem)

    def renewal_window(self, chain_pem):
        return self.ari


def challenge_failed(*names):
    return ACMEError("validation failed", challenge_failed=True, failed_names=tuple(names))


@pytest.fixture
def setup(tmp_path):
    config = parse_config(
        f'[server]\nhostname = "{HOST}"\ndata_dir = "{tmp_path}"\n'
        '[acme]\nenabled = true\n', tmp_path / "mailstead.toml")
    make_self_signed(HOST, config.cert_file, config.key_file)
    ctx = server_context(config.cert_file, config.key_file)
    executor = ThreadPoolExecutor(2)
    yield config, ctx, executor
    executor.shutdown()


class Accounts:
    def list_domains(self):
        return ["example.test"]


def manager(setup, ca) -> CertificateManager:
    config, ctx, executor = setup
    return CertificateManager(config, Accounts(), ctx, ChallengeResponder(), executor,
                              client_factory=ca)


NAMES = [HOST, "mta-sts.example.test", "autoconfig.example.test", "autodiscover.example.test"]


def test_wanted_names_host_first_no_duplicates(setup):
    config = setup[0]
    assert wanted_names(config, ["example.test"]) == NAMES
    assert wanted_names(config, ["example.test", "other.test"]) == NAMES + [
        "mta-sts.other.test", "autoconfig.other.test", "autodiscover.other.test"]


def test_first_order_installs_and_schedules_renewal_at_two_thirds(setup):
    ca = ScriptedCA(90.0)
    mgr = manager(setup, ca)
    assert mgr.due(NAMES) <= time.time()  # no certificate yet: now
    assert asyncio.run(mgr.obtain(NAMES)) is True
    assert ca.orders == [(NAMES, "http-01")]
    path = acme_file(mgr.config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tls_files(mgr.config) == (path, None)
    info = describe(path)
    assert sorted(info["names"]) == sorted(NAMES)
    # Renewal when a third of the lifetime remains: 60 days from now for 90-day certificates.
    assert mgr.due(NAMES) == pytest.approx(renewal_time(info))
    assert renewal_time(info) - time.time() == pytest.approx(60 * DAY, abs=60)
    status = mgr.status()
    assert status["failures"] == 0 and status["last_error"] is None
    # The live context serves the new certificate.
    served = _served(setup[1])
    assert served.serial_number == x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def _served(ctx: ssl.SSLContext) -> x509.Certificate:
    """The certificate a handshake with ``ctx`` presents, via an in-memory TLS pair."""
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=HOST)
    server = ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return x509.load_der_x509_certificate(client.getpeercert(binary_form=True))


def test_new_domain_orders_at_once_same_names_wait(setup):
    mgr = manager(setup, ScriptedCA(90.0))
    asyncio.run(mgr.obtain(NAMES))
    assert mgr.due(NAMES) > time.time() + 59 * DAY
    assert mgr.due(NAMES + ["mta-sts.other.test"]) <= time.time()
    assert mgr.due(list(reversed(NAMES))) > time.time() + 59 * DAY  # order does not matter


def test_renewal_information_moves_renewal_earlier_never_later(setup):
    ca = ScriptedCA(90.0)
    mgr = manager(setup, ca)
    asyncio.run(mgr.obtain(NAMES))
    soon = time.time() + DAY
    ca.ari = (soon, time.time() + 3600)
    ask = asyncio.run(mgr.check_renewal_info())
    assert ask == pytest.approx(time.time() + 3600, abs=5)
    assert mgr.due(NAMES) == pytest.approx(soon)
    # Asked again before the time it gave: no request to the CA.
    ca.ari = (time.time() + 80 * DAY, time.time() + 3600)
    asyncio.run(mgr.check_renewal_info())
    assert mgr.due(NAMES) == pytest.approx(soon)
    # A later suggestion never postpones our own schedule.
    mgr._save_status(ari_next_check=None)
    asyncio.run(mgr.check_renewal_info())
    assert mgr.due(NAMES) == pytest.approx(renewal_time(describe(acme_file(mgr.config))))


def test_renewal_information_checked_at_most_once_a_minute(setup):
    ca = ScriptedCA(90.0)
    mgr = manager(setup, ca)
    asyncio.run(mgr.obtain(NAMES))
    ca.ari = (None, time.time())  # a CA saying "ask again now"
    assert asyncio.run(mgr.check_renewal_info()) >= time.time() + 59


def test_name_failing_validation_is_dropped_and_the_rest_ordered(setup):
    ca = ScriptedCA(challenge_failed("autoconfig.example.test"), 90.0)
    mgr = manager(setup, ca)
    assert asyncio.run(mgr.obtain(NAMES)) is True
    assert ca.orders == [(NAMES, "http-01"), (NAMES[:2] + NAMES[3:], "http-01")]
    status = mgr.status()
    assert status["dropped"] == ["autoconfig.example.test"]
    assert status["dropped_error"] == "validation failed"
    # Not ordered again for the missing name before renewal time (no loop against the CA).
    assert mgr.due(NAMES) > time.time() + 59 * DAY


def test_host_name_failing_switches_challenge(setup):
    ca = ScriptedCA(challenge_failed(HOST, "mta-sts.example.test"), 90.0)
    mgr = manager(setup, ca)
    assert asyncio.run(mgr.obtain(NAMES)) is True
    assert ca.orders == [(NAMES, "http-01"), (NAMES, "tls-alpn-01")]
    assert mgr.status()["last_challenge"] == "tls-alpn-01"


def test_round_is_bounded_and_backs_off(setup):
    ca = ScriptedCA(*[challenge_failed(HOST)] * 10)
    mgr = manager(setup, ca)
    before = _served(setup[1]).serial_number
    assert asyncio.run(mgr.obtain(NAMES)) is False
    assert [c for _, c in ca.orders] == ["http-01", "tls-alpn-01"]  # then the round ends
    status = mgr.status()
    assert status["failures"] == 1
    assert status["next_attempt"] - time.time() == pytest.approx(BACKOFF[0], abs=5)
    # No certificate yet, and still the backoff holds: no order on every restart.
    assert mgr.due(NAMES) == pytest.approx(status["next_attempt"])
    asyncio.run(mgr.obtain(NAMES))
    assert mgr.status()["next_attempt"] - time.time() == pytest.approx(BACKOFF[1], abs=5)
    assert _served(setup[1]).serial_number == before  # the self-signed one still serves
    assert not acme_file(mgr.config).exists()


def test_ca_refusal_ends_the_round_and_honours_retry_after(setup):
    limited = ACMEError("too many certificates already issued", retry_after=7 * 3600.0)
    ca = ScriptedCA(limited)
    mgr = manager(setup, ca)
    assert asyncio.run(mgr.obtain(NAMES)) is False
    assert len(ca.orders) == 1  # another order would be refused the same way
    status = mgr.status()
    assert status["last_error"] == "too many certificates already issued"
    assert status["next_attempt"] - time.time() == pytest.approx(7 * 3600, abs=5)


def test_success_after_failures_resets_backoff(setup):
    ca = ScriptedCA(ACMEError("down"), 90.0)
    mgr = manager(setup, ca)
    asyncio.run(mgr.obtain(NAMES))
    assert mgr.status()["failures"] == 1
    assert asyncio.run(mgr.obtain(NAMES)) is True
    status = mgr.status()
    assert status["failures"] == 0 and status["next_attempt"] is None
    assert status["last_error"] is None


def test_failed_renewal_keeps_the_valid_certificate(setup):
    ca = ScriptedCA(90.0, ACMEError("down"))
    mgr = manager(setup, ca)
    asyncio.run(mgr.obtain(NAMES))
    pem = acme_file(mgr.config).read_bytes()
    asyncio.run(mgr.obtain(NAMES))
    assert acme_file(mgr.config).read_bytes() == pem
    assert json.loads((mgr.config.data_path("tls/acme-status.json")).read_text())["failures"] == 1


def test_run_loop_orders_once_then_sleeps(setup):
    ca = ScriptedCA(90.0)
    mgr = manager(setup, ca)

    async def scenario():
        mgr.start()
        for _ in range(200):
            if ca.orders:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        await mgr.stop()

    asyncio.run(scenario())
    assert len(ca.orders) == 1 and mgr.status()["last_success"]


def test_renew_now_orders_even_when_not_due(setup):
    ca = ScriptedCA(90.0, 90.0)
    mgr = manager(setup, ca)
    asyncio.run(mgr.obtain(NAMES))

    async def scenario():
        mgr.start()
        await asyncio.sleep(0.05)
        assert len(ca.orders) == 1  # not due for 60 days
        mgr.renew_now()
        for _ in range(200):
            if len(ca.orders) == 2:
                break
            await asyncio.sleep(0.01)
        await mgr.stop()

    asyncio.run(scenario())
    assert len(ca.orders) == 2


def test_disabled_manager_never_orders(setup, tmp_path):
    config, ctx, executor = setup
    off = parse_config(f'[server]\nhostname = "{HOST}"\ndata_dir = "{tmp_path}"\n',
                       tmp_path / "mailstead.toml")
    ca = ScriptedCA()
    mgr = CertificateManager(off, Accounts(), ctx, ChallengeResponder(), executor,
                             client_factory=ca)
    mgr.start()
    assert mgr.task is None and ca.orders == []
    assert tls_files(off) == (off.cert_file, off.key_file)


def _spki(path) -> bytes:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def test_renewal_keeps_the_key_for_dane(setup):
    ca = ScriptedCA(90.0, 90.0)
    mgr = manager(setup, ca)
    asyncio.run(mgr.obtain(NAMES))
    first = _spki(acme_file(mgr.config))
    asyncio.run(mgr.obtain(NAMES))
    assert ca.keys[0] is None and ca.keys[1] is not None
    assert _spki(acme_file(mgr.config)) == first  # a TLSA 3 1 1 record stays valid


def test_new_key_every_time_when_reuse_is_off(setup, tmp_path):
    config, ctx, executor = setup
    config = parse_config(f'[server]\nhostname = "{HOST}"\ndata_dir = "{tmp_path}"\n'
                          '[acme]\nenabled = true\nreuse_key = false\n',
                          tmp_path / "mailstead.toml")
    ca = ScriptedCA(90.0, 90.0)
    mgr = CertificateManager(config, Accounts(), ctx, ChallengeResponder(), executor,
                             client_factory=ca)
    asyncio.run(mgr.obtain(NAMES))
    first = _spki(acme_file(config))
    asyncio.run(mgr.obtain(NAMES))
    assert ca.keys == [None, None] and _spki(acme_file(config)) != first
