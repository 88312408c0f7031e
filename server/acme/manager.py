"""Keeping a valid certificate on every TLS listener: obtain, renew, reload — no restarts.

Until the CA issues one, the self-signed certificate from ``init`` serves. An issued
certificate (key and chain in one file, ``tls/acme.pem``, written atomically, 0600, so the key
and the chain can never be out of step after a crash) is loaded into the one ``SSLContext`` all
listeners share, in place: new handshakes get it, open connections carry on.

When: at start if there is no ACME certificate, it does not cover the names wanted, or a third
of its lifetime or less remains; otherwise at that point. A restart reuses a valid certificate
(no re-issue loop against the CA's rate limits); the CA's renewal information (ARI, RFC 9773)
moves renewal earlier when it asks. A name whose validation fails is left out and the rest
ordered again; the other challenge type is tried when the host name fails. Failed rounds are
retried with growing pauses (1 min … 1 day, or the CA's Retry-After if longer, kept across
restarts); every attempt and its error go to ``tls/acme-status.json`` for
``mailstead tls status`` and the admin panel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from maildir.safeio import atomic_write, make_private_dir
from server.config import LETSENCRYPT_STAGING, Config
from server.tlscert import reload_certificate

log = logging.getLogger("mailstead.acme")

BACKOFF = (60, 300, 1800, 7200, 21600, 86400)
MAX_ORDERS = 4
OTHER = {"http-01": "tls-alpn-01", "tls-alpn-01": "http-01"}


def acme_file(config: Config) -> Path:
    return config.data_path("tls/acme.pem")


def status_file(config: Config) -> Path:
    return config.data_path("tls/acme-status.json")


def tls_files(config: Config) -> tuple[Path, Path | None]:
    """(certificate file, key file) to serve: the ACME one once issued, else [tls]'s."""
    combined = acme_file(config)
    if config.acme.enabled and combined.exists():
        return combined, None
    return config.cert_file, config.key_file


def wanted_names(config: Config, domains: list[str]) -> list[str]:
    names = [config.server.hostname]
    for domain in domains:
        names += [f"{label}.{domain}" for label in config.acme.domain_names]
    names += list(config.acme.extra_names)
    return list(dict.fromkeys(names))  # order kept, duplicates dropped


def describe(path: Path) -> dict | None:
    """Names, issuer and validity of the certificate in ``path`` (first PEM block)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.value for n in sans if isinstance(n, x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    return {"names": names, "issuer": cert.issuer.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.timestamp(),
            "not_after": cert.not_valid_after_utc.timestamp()}


def renewal_time(info: dict) -> float:
    """When a third of the lifetime remains (Let's Encrypt's advice; 30 days of 90)."""
    lifetime = info["not_after"] - info["not_before"]
    return info["not_after"] - lifetime / 3


class CertificateManager:
    def __init__(self, config: Config, accounts, tls_context, responder, executor,
                 client_factory=None):
        self.accounts = accounts
        self.tls = tls_context
        self.responder = responder
        self.executor = executor
        self.client_factory = client_factory or _default_client
        # Told after a new certificate is in ``tls``: the MX worker processes load it too.
        self.on_installed = lambda: None
        self.renew_now_event = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.update_config(config)

    def update_config(self, config: Config) -> None:
        self.config = config

    # --- status ---

    def status(self) -> dict:
        try:
            return json.loads(status_file(self.config).read_text())
        except (OSError, ValueError):
            return {}

    def _save_status(self, **changes) -> None:
        status = self.status() | changes
        make_private_dir(status_file(self.config).parent)
        atomic_write(status_file(self.config), json.dumps(status, indent=2) + "\n", 0o600)

    # --- scheduling ---

    def start(self) -> None:
        if self.config.acme.enabled:
            self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def renew_now(self) -> None:
        self.renew_now_event.set()

    def due(self, names: list[str]) -> float:
        """When the next attempt should be (epoch seconds): now without a certificate or when
        the names wanted changed (a domain added); else at renewal time, or earlier if the
        CA's renewal information (RFC 9773) says so. A certificate that lacks some names
        because they failed validation is not re-ordered before then: that would be a loop
        against the CA's rate limits."""
        status = self.status()
        info = describe(acme_file(self.config))
        same_names = sorted(names) == sorted(status.get("requested", []))
        if info is None or not same_names:
            when = time.time()
        else:
            when = renewal_time(info)
            if status.get("ari_renew_at"):
                when = min(when, status["ari_renew_at"])
        if same_names and status.get("next_attempt"):
            # A failed attempt for these names waits out its backoff, certificate or not;
            # changing the names (a domain added) is a new request and goes at once.
            when = max(when, status["next_attempt"])
        return when

    async def check_renewal_info(self) -> float:
        """Ask the CA for renewal information when it is time; returns when to ask next."""
        status = self.status()
        now = time.time()
        if (status.get("ari_next_check") or 0) > now:
            return status["ari_next_check"]
        path = acme_file(self.config)
        if describe(path) is None:
            return now + 6 * 3600
        renew_at, ask_again = await asyncio.get_running_loop().run_in_executor(
            self.executor, self._renewal_window, path.read_bytes())
        # Never poll the CA more often than once a minute, whatever it says.
        ask_again = max(ask_again, now + 60)
        self._save_status(ari_renew_at=renew_at, ari_next_check=ask_again)
        return ask_again

    async def run(self) -> None:
        while True:
            names = wanted_names(self.config, self.accounts.list_domains())
            try:
                ask_ari = await self.check_renewal_info()
            except Exception:  # never let a renewal-info hiccup stop renewals
                log.exception("checking renewal information failed")
                ask_ari = time.time() + 3600
            when = self.due(names)
            wait = max(0.0, min(when, ask_ari) - time.time())
            self.renew_now_event.clear()
            try:
                await asyncio.wait_for(self.renew_now_event.wait(), wait)
                log.info("certificate renewal requested")
            except TimeoutError:
                if time.time() < when:
                    continue  # woke only to look at the renewal information again
            try:
                await self.obtain(names)
            except Exception:  # a bug must not end renewals for good; retry later
                log.exception("certificate renewal failed")
                self._save_status(next_attempt=time.time() + BACKOFF[-1])

    async def obtain(self, names: list[str]) -> bool:
        """One round of up to four orders. A name that fails validation (its DNS not pointed
        here yet) is dropped and the rest ordered again; when the host name itself fails, the
        other challenge type is tried. Errors that are not about validation (the CA refused,
        rate limits, no network) end the round at once: another order would fail the same
        way. The round's outcome goes to the status file."""
        hostname = self.config.server.hostname
        self._save_status(requested=names)
        challenges = [self.config.acme.challenge, OTHER[self.config.acme.challenge]]
        current, dropped, error, retry_after = list(names), [], "no attempt", None
        for _ in range(MAX_ORDERS):
            challenge = challenges[0]
            self._save_status(last_attempt=time.time(), last_challenge=challenge,
                              wanted=current)
            try:
                issued = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._issue, current, challenge)
            except Exception as err:  # ACMEError and anything the network throws
                error = getattr(err, "detail", None) or f"{type(err).__name__}: {err}"
                retry_after = getattr(err, "retry_after", None)
                log.warning("certificate for %s via %s failed: %s", ", ".join(current),
                            challenge, error)
                if not getattr(err, "challenge_failed", False):
                    break
                failed = set(getattr(err, "failed_names", ()))
                if failed and hostname not in failed and set(current) - failed:
                    dropped += [n for n in current if n in failed]
                    current = [n for n in current if n not in failed]
                    continue
                challenges.pop(0)
                if not challenges:
                    break
                continue
            self._install(issued)
            self._save_status(last_error=None, last_success=time.time(), next_attempt=None,
                              failures=0, names=list(issued.names), dropped=dropped,
                              dropped_error=error if dropped else None,
                              ari_renew_at=None, ari_next_check=None)
            log.info("certificate for %s installed, valid until %s", ", ".join(issued.names),
                     issued.not_after.isoformat())
            if dropped:
                log.warning("left out of the certificate (validation failed): %s",
                            ", ".join(dropped))
            return True
        failures = self.status().get("failures", 0) + 1
        pause = max(BACKOFF[min(failures, len(BACKOFF)) - 1], retry_after or 0)
        self._save_status(last_error=error, failures=failures, next_attempt=time.time() + pause)
        return False

    def _renewal_window(self, chain_pem: bytes) -> tuple[float | None, float]:
        return self.client_factory(self.config).renewal_window(chain_pem)

    def _issue(self, names: list[str], challenge: str):
        client = self.client_factory(self.config)
        return client.issue(names, challenge, self.responder, key_pem=self._reused_key())

    def _reused_key(self) -> bytes | None:
        """The current certificate's key when [acme] reuse_key is on: a DANE (TLSA 3 1 1)
        record pins the key, so a new key at every renewal would break delivery to us for
        every sender that checks DANE until the record is changed."""
        if not self.config.acme.reuse_key:
            return None
        try:
            pem = acme_file(self.config).read_bytes()
            key = serialization.load_pem_private_key(_first_key_block(pem), None)
        except (OSError, ValueError, TypeError):
            return None
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def _install(self, issued) -> None:
        path = acme_file(self.config)
        make_private_dir(path.parent)
        atomic_write(path, issued.key_pem + issued.chain_pem, 0o600)
        reload_certificate(self.tls, path, None)
        self.on_installed()


def _first_key_block(pem: bytes) -> bytes:
    start = pem.index(b"-----BEGIN ")
    while b"PRIVATE KEY-----" not in pem[start:pem.index(b"\n", start)]:
        start = pem.index(b"-----BEGIN ", start + 1)
    end = pem.index(b"-----END ", start)
    return pem[start:pem.index(b"\n", end) + 1]


def _default_client(config: Config):
    from server.acme.client import ACMEClient

    acme = config.acme
    directory = LETSENCRYPT_STAGING if acme.staging else acme.directory
    email = acme.email or None
    return ACMEClient(directory, config.data_path("acme"), email=email,
                      ca_bundle=acme.ca_bundle or None, eab_kid=acme.eab_kid or None,
                      eab_hmac_key=acme.eab_hmac_key or None)


__all__ = ["CertificateManager", "describe", "renewal_time", "tls_files", "wanted_names"]
