"""ACME (RFC 8555) client: account, order, http-01 / tls-alpn-01 challenges, finalization.

Built on the ``acme`` library (certbot's), which does the JWS signing, nonces (a badNonce is
retried once, RFC 8555 §6.5) and message types. Its polling helpers sleep a fixed second and
ignore Retry-After, so polling is done here instead.

Everything blocks: the certificate manager calls ``issue()`` in a worker thread. Every failure
is an ``ACMEError`` whose ``detail`` is shown to the admin as-is; ``challenge_failed`` says that
validation failed, so trying the other challenge type may help.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import josepy as jose
import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from maildir.safeio import atomic_write, make_private_dir
from server.acme.responder import ChallengeResponder

log = logging.getLogger("mailstead.acme")

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
CHALLENGES = ("http-01", "tls-alpn-01")
KEY_TYPES = {"ec256": lambda: ec.generate_private_key(ec.SECP256R1()),
             "rsa2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)}
USER_AGENT = "mailstead (acme-python)"
# Poll after 0.25 s, then back off to one request every 5 s: Pebble validates in milliseconds,
# Let's Encrypt in a few seconds, and a Retry-After from the CA always wins (RFC 8555 §7.5.1).
POLL_FIRST, POLL_MAX = 0.25, 5.0
_PROBLEM_PREFIX = "urn:ietf:params:acme:error:"


@dataclass(frozen=True)
class Issued:
    chain_pem: bytes          # leaf first, then the intermediates, as the CA sent them
    key_pem: bytes            # PKCS#8
    names: tuple[str, ...]    # the DNS names in the leaf
    not_before: datetime.datetime
    not_after: datetime.datetime
    issuer: str


class ACMEError(Exception):
    def __init__(self, detail: str, *, challenge_failed: bool = False,
                 retry_after: float | None = None, failed_names: tuple[str, ...] = ()):
        super().__init__(detail)
        self.detail = detail
        self.challenge_failed = challenge_failed
        # The names whose validation failed (empty when not known): the manager orders again
        # without them rather than losing the whole certificate to one unpublished name.
        self.failed_names = failed_names
        # Seconds the CA asked us to wait (Retry-After with rateLimited or a 503), else None.
        self.retry_after = retry_after


class _Ready(challenges.ChallengeResponse):
    """RFC 8555 §7.5.1: "{}" tells the CA to validate. One class for both types: acme >= 4 has
    none for tls-alpn-01, and the key authorization is never sent anyway."""
    typ = "ready"  # ChallengeResponse.to_partial_json drops the type: the body is {}

    def __bool__(self) -> bool:
        # The library sends an empty payload (a POST-as-GET, which validates nothing) for a
        # falsy object, and a mapping without fields is falsy.
        return True


class _Network(client.ClientNetwork):
    """Remembers the last Retry-After header: the library's exceptions drop the response, but a
    rateLimited problem (RFC 8555 §6.6) says in it when we may come back."""

    retry_after: str | None = None

    def _send_request(self, method, url, *args, **kwargs):
        response = super()._send_request(method, url, *args, **kwargs)
        self.retry_after = response.headers.get("Retry-After")
        return response


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not retry_after or retry_after.strip().isdigit():
        return float(retry_after) if retry_after else None
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(retry_after)
        return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())
    return None


def _problem(err: messages.Error | None) -> str:
    """An RFC 8555 §6.7 problem document as one line: "type: detail" (+ subproblems)."""
    if err is None:
        return "no reason given"
    typ = str(err.typ).removeprefix(_PROBLEM_PREFIX)
    text = f"{typ}: {err.detail or err.title or err.description or 'no detail'}"
    for sub in err.subproblems or ():  # RFC 8555 §6.7.1: one per identifier
        who = f"{sub.identifier.value}: " if sub.identifier else ""
        text += f"; {who}{sub.typ.removeprefix(_PROBLEM_PREFIX)}: {sub.detail}"
    return text


def _net_reason(exc: BaseException) -> str:
    """The innermost socket or TLS error under requests' and urllib3's wrappers."""
    best, todo, seen = None, [exc], set()
    while todo:
        if id(e := todo.pop()) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"certificate not trusted ({e.verify_message})"
        if isinstance(e, ssl.SSLError):
            best = f"TLS error ({e.reason or e})"
        elif isinstance(e, OSError) and not isinstance(e, requests.RequestException):
            best = e.strerror or str(e) or type(e).__name__
        todo += [x for x in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
                 if isinstance(x, BaseException)]
    return best or str(exc)


def _epoch(when: datetime.datetime) -> float:
    # The library mixes aware (UTC) and naive (local time) datetimes; timestamp() reads each
    # the right way.
    return when.timestamp()


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class ACMEClient:
    """One CA directory and one account; ``state_dir`` keeps the account key and registration.
    Calls on one client are serialised (a lock), so it may be shared between threads."""

    def __init__(self, directory: str, state_dir: Path, *, email: str | None = None,
                 ca_bundle: str | None = None, eab_kid: str | None = None,
                 eab_hmac_key: str | None = None, timeout: float = 30,
                 poll_timeout: float = 120):
        if not directory.startswith("https://"):
            raise ValueError(f"ACME directory must be an https:// URL, not {directory!r}")
        if (eab_kid is None) != (eab_hmac_key is None):
            raise ValueError("external account binding needs both a key id and an HMAC key")
        self.directory, self.state_dir = directory, Path(state_dir)
        self.email, self.eab_kid, self.eab_hmac_key = email, eab_kid, eab_hmac_key
        self.timeout, self.poll_timeout = timeout, poll_timeout
        # Always verified: the given bundle, else the system store (requests' own default is
        # certifi's copy, which the admin's update-ca-certificates does not reach).
        paths = ssl.get_default_verify_paths()
        self._verify = ca_bundle or paths.cafile or paths.capath or True
        self._key_file = self.state_dir / "account-key.pem"
        self._reg_file = self.state_dir / "account.json"
        self._lock = threading.Lock()
        self._acme: client.ClientV2 | None = None
        self._step = ""  # what we are doing, for error texts

    # ------------------------------------------------------------------ account (RFC 8555 §7.3)
    def account(self) -> str:
        """The account URL; creates the key and registers on first use, then reuses both."""
        with self._lock, self._errors():
            return self._account()

    def _account(self) -> str:
        acme, regs = self._client(), self._registrations()
        # Keyed by directory (to staging and back registers nothing new) and tied to the key
        # (after account-key.pem is replaced, the old registration is no use).
        entry = regs.get(self.directory)
        if not entry or entry.get("key") != self._thumbprint:
            self._step = f"registering an account at {self.directory}"
            eab = None if self.eab_kid is None else messages.ExternalAccountBinding.from_data(
                self._jwk.public_key(), self.eab_kid, self.eab_hmac_key, acme.directory)
            reg = messages.NewRegistration.from_data(  # EAB: RFC 8555 §7.3.4
                email=self.email, terms_of_service_agreed=True, external_account_binding=eab)
            acme.net.account = None  # RFC 8555 §6.2: newAccount is signed with the JWK, no kid
            try:
                entry = {"uri": acme.new_account(reg).uri, "contact": list(reg.contact)}
                log.info("acme: registered account %s", entry["uri"])
            except errors.ConflictError as e:
                # RFC 8555 §7.3.1: our key already has an account (account.json was lost).
                entry = {"uri": e.location, "contact": None}
            regs[self.directory] = {**entry, "key": self._thumbprint}
            self._save(regs)
        acme.net.account = messages.RegistrationResource(uri=entry["uri"],
                                                         body=messages.Registration())
        want = messages.Registration.from_data(email=self.email)
        if self.email and entry["contact"] != list(want.contact):  # RFC 8555 §7.3.2
            self._step = "updating the account's contact address"
            acme.update_registration(acme.net.account, want)
            regs[self.directory]["contact"] = list(want.contact)
            self._save(regs)
        return entry["uri"]

    def _registrations(self) -> dict:
        try:
            return json.loads(self._reg_file.read_text()).get("accounts", {})
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as e:
            raise ACMEError(f"cannot read {self._reg_file}: {e}") from e

    def _save(self, regs: dict) -> None:
        atomic_write(self._reg_file, json.dumps({"accounts": regs}, indent=2) + "\n", 0o600)

    def _client(self) -> client.ClientV2:
        if self._acme is not None:
            return self._acme
        make_private_dir(self.state_dir)
        try:
            key = serialization.load_pem_private_key(self._key_file.read_bytes(), None)
        except FileNotFoundError:
            key = ec.generate_private_key(ec.SECP256R1())
            atomic_write(self._key_file, _pem(key), 0o600)
        except (OSError, ValueError) as e:
            # Never replace an unreadable key: the account, and its history with the CA's rate
            # limits, belongs to it.
            raise ACMEError(f"cannot read the account key {self._key_file}: {e}") from e
        if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
            self._jwk, alg = jose.JWKEC(key=key), jose.ES256
        elif isinstance(key, rsa.RSAPrivateKey):
            self._jwk, alg = jose.JWKRSA(key=key), jose.RS256
        else:
            raise ACMEError(f"{self._key_file}: the account key must be EC P-256 or RSA")
        # RFC 8555 §8.1: key authorizations end in the key's RFC 7638 thumbprint.
        self._thumbprint = jose.b64encode(self._jwk.thumbprint(hash_function=hashes.SHA256))
        self._thumbprint = self._thumbprint.decode()
        net = _Network(self._jwk, alg=alg, verify_ssl=self._verify, user_agent=USER_AGENT,
                       timeout=self.timeout)
        self._step = f"reading the ACME directory {self.directory}"
        self._acme = client.ClientV2(client.ClientV2.get_directory(self.directory, net), net)
        return self._acme

    # ------------------------------------------------------------------ renewal info (RFC 9773)
    def renewal_window(self, chain_pem: bytes) -> tuple[float | None, float]:
        """(when to renew, when to ask again), epoch seconds, from the CA's renewal information
        (ARI). The first is None when the CA offers no ARI or did not answer: the caller keeps
        its own schedule. The library picks a random moment in the suggested window, as §4.2
        asks, and honours the CA's Retry-After for the next check."""
        with self._lock:
            try:
                self._client()
                self._step = "fetching renewal information"
                renew_at, ask_again = self._acme.renewal_time(chain_pem)
            except (errors.ARIError, errors.Error, requests.RequestException, ValueError,
                    jose.DeserializationError, ACMEError) as e:
                log.warning("acme: no renewal information: %s", e)
                retry = getattr(e, "retry_after", None)
                if isinstance(retry, datetime.datetime):
                    return None, _epoch(retry)
                return None, time.time() + 6 * 3600
        return (_epoch(renew_at) if renew_at else None), _epoch(ask_again)

    # ------------------------------------------------------------------ issuance (RFC 8555 §7.4)
    def issue(self, names: list[str], challenge: str, responder: ChallengeResponder,
              key_type: str = "ec256", key_pem: bytes | None = None) -> Issued:
        """Order, validate with ``challenge``, finalize and download a certificate for names.
        ``key_pem`` reuses that private key (a renewal keeping TLSA records valid); else a new
        one of ``key_type`` is made."""
        names = list(dict.fromkeys(n.rstrip(".").lower() for n in names))
        if challenge not in CHALLENGES or key_type not in KEY_TYPES or not names:
            raise ValueError(f"need names, a challenge of {CHALLENGES} and a key type of "
                             f"{tuple(KEY_TYPES)}; got {names}, {challenge!r}, {key_type!r}")
        key = _load_key(key_pem) if key_pem else KEY_TYPES[key_type]()
        with self._lock, self._errors():
            self._account()
            self._step = f"ordering a certificate for {', '.join(names)}"
            csr = crypto_util.make_csr(_pem(key), names)
            try:
                order = self._acme.new_order(csr)
            except messages.Error as e:
                if e.code != "accountDoesNotExist":
                    raise
                # The CA forgot the account (a test CA restarted, or it was deactivated): the
                # stored registration is useless, register once more.
                regs = self._registrations()
                regs.pop(self.directory, None)
                self._save(regs)
                self._account()
                order = self._acme.new_order(csr)
            log.info("acme: order %s for %s", order.uri, ", ".join(names))
            self._authorize(order, challenge, responder)
            chain = self._finalize(order)
        return self._issued(chain.encode("ascii"), key, names)

    def _authorize(self, order: messages.OrderResource, challenge: str,
                   responder: ChallengeResponder) -> None:
        todo: list[tuple[messages.AuthorizationResource, messages.ChallengeBody]] = []
        undo = {}  # authorization URL -> removes its challenge from the responder
        try:
            for authzr in order.authorizations:
                name, status = authzr.body.identifier.value, authzr.body.status
                if status == messages.STATUS_VALID:
                    continue  # the CA reused a recent authorization
                if status != messages.STATUS_PENDING:
                    raise ACMEError(f"{name}: the CA's authorization is {status}")
                offered = [c.chall.to_partial_json() for c in authzr.body.challenges]
                pick = [c for c, j in zip(authzr.body.challenges, offered, strict=True)
                        if j.get("type") == challenge]
                if not pick:
                    types = ", ".join(j.get("type", "?") for j in offered)
                    raise ACMEError(f"{name}: the CA offers no {challenge} challenge "
                                    f"(offered: {types})", challenge_failed=True)
                token = pick[0].chall.to_partial_json()["token"]
                key_authorization = f"{token}.{self._thumbprint}"  # RFC 8555 §8.1
                if challenge == "http-01":
                    responder.add_http01(token, key_authorization)
                    undo[authzr.uri] = lambda t=token: responder.remove_http01(t)
                else:
                    responder.add_tls_alpn01(name, key_authorization)
                    undo[authzr.uri] = lambda n=name: responder.remove_tls_alpn01(n)
                todo.append((authzr, pick[0]))
            for authzr, challb in todo:
                name = authzr.body.identifier.value
                self._step = f"answering the {challenge} challenge for {name}"
                self._acme.answer_challenge(challb, _Ready())
            self._poll_authorizations([a for a, _ in todo], challenge, undo)
        finally:
            for remove in undo.values():
                remove()

    def _poll_authorizations(self, waiting: list[messages.AuthorizationResource],
                             challenge: str, undo: dict) -> None:
        deadline, delay, failures = time.monotonic() + self.poll_timeout, POLL_FIRST, []
        failed: list[str] = []
        while waiting:
            name = waiting[0].body.identifier.value
            self._step = f"waiting for the CA to validate {name}"
            authzr, response = self._acme.poll(waiting[0])
            if authzr.body.status == messages.STATUS_PENDING:
                self._wait(response, delay, deadline)
                delay = min(delay * 2, POLL_MAX)
                continue
            undo.pop(waiting.pop(0).uri, lambda: None)()  # done: stop serving it at once
            if authzr.body.status != messages.STATUS_VALID:
                errs = [c.error for c in authzr.body.challenges if c.error is not None]
                reason = _problem(errs[0]) if errs else f"authorization {authzr.body.status}"
                failures.append(f"{name}: {challenge} failed: {reason}")
                failed.append(name)
                log.warning("acme: %s", failures[-1])
        if failures:
            raise ACMEError("; ".join(failures), challenge_failed=True,
                            failed_names=tuple(failed))

    def _wait(self, response: requests.Response | None, delay: float, deadline: float) -> None:
        if response is not None:
            delay = max(delay, _seconds(response.headers.get("Retry-After")) or 0)
        if time.monotonic() + delay > deadline:
            raise ACMEError(f"gave up after {self.poll_timeout:g} s {self._step}")
        time.sleep(delay)

    def _finalize(self, order: messages.OrderResource) -> str:
        self._step = "finalizing the order"
        deadline, delay = time.monotonic() + self.poll_timeout, POLL_FIRST
        order = self._acme.begin_finalization(order)  # RFC 8555 §7.4: POST the CSR
        post_as_get = {"new_nonce_url": self._acme.directory["newNonce"]}  # RFC 8555 §6.3
        response = None
        while not (order.body.status == messages.STATUS_VALID and order.body.certificate):
            if order.body.status == messages.STATUS_INVALID:
                raise ACMEError(f"the CA refused the order: {_problem(order.body.error)}")
            self._step = "waiting for the CA to issue the certificate"
            self._wait(response, delay, deadline)  # "processing" (RFC 8555 §7.1.6)
            delay = min(delay * 2, POLL_MAX)
            response = self._acme.net.post(order.uri, None, **post_as_get)
            order = order.update(body=messages.Order.from_json(response.json()))
        # RFC 8555 §7.4.2: the certificate URL serves the default chain (leaf first).
        self._step = "downloading the certificate"
        return self._acme.net.post(order.body.certificate, None, **post_as_get).text

    def _issued(self, chain_pem: bytes, key, names: list[str]) -> Issued:
        try:
            leaf = x509.load_pem_x509_certificates(chain_pem)[0]
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, IndexError, x509.ExtensionNotFound) as e:
            raise ACMEError(f"the CA sent an unusable certificate: {e}") from e
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise ACMEError("the CA sent a certificate for another key")
        got = tuple(n.lower() for n in sans.get_values_for_type(x509.DNSName))
        if missing := set(names) - set(got):
            raise ACMEError(f"the certificate lacks {', '.join(sorted(missing))}")
        log.info("acme: issued %s for %s, expires %s", leaf.serial_number, ", ".join(got),
                 leaf.not_valid_after_utc)
        return Issued(chain_pem, _pem(key), got, leaf.not_valid_before_utc,
                      leaf.not_valid_after_utc, leaf.issuer.rfc4514_string())

    # ------------------------------------------------------------------ errors
    @contextlib.contextmanager
    def _errors(self):
        """Turn the library's and the network's exceptions into an ACMEError saying what we
        were doing; the caller shows detail to the admin."""
        try:
            yield
        except ACMEError:
            raise
        except requests.RequestException as e:
            reason = (f"no answer within {self.timeout:g} s" if isinstance(e, requests.Timeout)
                      else _net_reason(e))
            raise ACMEError(f"{self._step}: cannot reach the ACME server: {reason}") from e
        except messages.Error as e:
            net = self._acme.net if self._acme else None
            raise ACMEError(f"{self._step}: {_problem(e)}",
                            retry_after=_seconds(net.retry_after if net else None)) from e
        except (errors.Error, jose.DeserializationError) as e:
            what = e.args[0] if e.args else e
            if isinstance(what, requests.Response):
                what = f"HTTP {what.status_code} from {what.url}"
            raise ACMEError(f"{self._step}: unexpected answer from the ACME server: "
                            f"{what or type(e).__name__}") from e


def _load_key(key_pem: bytes):
    key = serialization.load_pem_private_key(key_pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the certificate key must be an EC or RSA key")
    return key
