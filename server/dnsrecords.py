"""The DNS records a domain must publish for mailstead to serve its mail, and why each one.

``expected_records`` is the one list behind ``mailstead dns``, the admin panel's DNS page and
``server/dnscheck.py``: every record with its zone-file value, a one-sentence purpose, whether
mail breaks without it, and the condition under which it applies. Nothing here asks DNS; the
only I/O is reading the DKIM keys and the served certificate.

Host-level records (the host's A/AAAA, its SPF, its TLSA) belong to the mail host's name, which
may sit in another zone than the domain: they are marked ``host=True`` and ``zone_file`` leaves
them out (as comments) when they are outside the zone being written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from server import dkimkeys
from server.config import LETSENCRYPT, LETSENCRYPT_STAGING, Config
from server.web.mtasts import policy_text

TTL = 3600

# RFC 6186 §3 + RFC 8314 §5.1: (service label, [listen] key, priority). Implicit TLS gets the
# lower (preferred) priority, as RFC 8314 §5.1 recommends.
SRV_SERVICES = (
    ("_submissions._tcp", "submissions", 0),
    ("_submission._tcp", "submission", 10),
    ("_imaps._tcp", "imaps", 0),
    ("_imap._tcp", "imap", 10),
    ("_pop3s._tcp", "pop3s", 10),
    ("_pop3._tcp", "pop3", 20),
)

# What to write instead of a value mailstead cannot know (value None).
_UNKNOWN = {
    "A": "your server's public IPv4 address",
    "CAA": '0 issue "<your CA\'s domain name>"',
    "TLSA": "3 1 1 <SHA-256 of the certificate's public key>",
}


@dataclass(frozen=True, slots=True)
class Record:
    name: str                     # absolute, no trailing dot
    rtype: str
    value: str | None             # zone-file rdata (TXT: the logical value); None = not known
    purpose: str
    required: bool                # True: mail breaks without it; False: recommended/optional
    condition: str | None = None  # when it applies, if not always
    host: bool = False            # about the mail host's name, not the domain's

    def txt_strings(self) -> list[str]:
        """The TXT value as DNS character-strings of at most 255 bytes (RFC 1035 §3.3.14)."""
        raw = (self.value or "").encode()
        return [raw[i:i + 255].decode() for i in range(0, len(raw), 255)] or [""]

    def display_value(self) -> str:
        """The value, or a description of what goes there when mailstead cannot know it."""
        if self.value is None:
            return _UNKNOWN.get(self.rtype, "(unknown)")
        return self.value

    def rdata_text(self) -> str:
        """The value as zone-file rdata: TXT values quoted and split in 255-byte strings."""
        if self.rtype == "TXT":
            strings = [_quote(s) for s in self.txt_strings()]
            return strings[0] if len(strings) == 1 else "( " + " ".join(strings) + " )"
        return self.display_value()


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def spki_sha256(cert_pem: bytes) -> str:
    """Hex SHA-256 of the first certificate's SubjectPublicKeyInfo: the data of a TLSA 3 1 1
    record (RFC 6698 §2.1: selector 1 = SPKI, matching type 1 = SHA-256). The PEM may also hold
    the key and the chain, as the ACME file does; the leaf comes first among the certificates."""
    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def served_spki_sha256(config: Config) -> str | None:
    """The TLSA hash of the certificate served, or None when publishing it would go wrong.

    With ACME on, the self-signed certificate from ``init`` is replaced by one with a new key at
    the first issuance, and with ``[acme] reuse_key`` off at every renewal: a TLSA record for
    either would soon make every DANE-checking sender refuse to deliver to us.
    """
    from server.acme.manager import tls_files

    cert_file, key_file = tls_files(config)
    if config.acme.enabled and (key_file is not None or not config.acme.reuse_key):
        return None
    try:
        return spki_sha256(cert_file.read_bytes())
    except (OSError, ValueError, IndexError):
        return None


def mta_sts_id(config: Config) -> str:
    """RFC 8461 §3.1: the id must change whenever the policy does, and only then (senders
    refetch the policy when it changes). A hash of the served policy text does exactly that;
    32 hex digits fit the 1-32 alphanumeric characters allowed."""
    text = policy_text(config.server.hostname, config.web.mta_sts_mode,
                       config.web.mta_sts_max_age)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def ca_domain(config: Config) -> str | None:
    """The CAA issuer domain of the ACME CA in use, when known (RFC 8659 §4.2)."""
    if config.acme.staging or config.acme.directory in (LETSENCRYPT, LETSENCRYPT_STAGING):
        # Let's Encrypt's staging CA checks CAA for the same domain as production.
        return "letsencrypt.org"
    return None


def expected_records(config: Config, domain: str, *, dkim_keys: list[dkimkeys.DKIMKey],
                     cert_spki_sha256: str | None = None) -> list[Record]:
    """Every record ``domain`` should publish when its mail is served by this server."""
    d, h = domain.lower().rstrip("."), config.server.hostname.lower().rstrip(".")
    recs = [Record(d, "MX", f"10 {h}.", f"Tells other servers to deliver mail for {d} to {h}.",
                   required=True)]
    recs += _address_records(config, h)
    recs.append(Record(
        d, "TXT", "v=spf1 mx -all",
        "SPF (RFC 7208): only the servers in your MX may send mail from this domain, so "
        "receivers can reject forgeries.", required=True))
    if h != d:  # when the host is the domain, the domain's SPF record serves both
        # RFC 7208 §2.3: receivers check the HELO name too, and it is the only identity
        # checked for bounces (null reverse-path).
        recs.append(Record(h, "TXT", "v=spf1 a -all",
                           f"SPF for the name {h} uses to greet other servers (HELO), checked "
                           "when it sends bounces.", required=False, host=True))
    for key in dkim_keys:
        recs.append(Record(
            key.record_name, "TXT", key.txt_value(),
            f"DKIM (RFC 6376): the public {key.algorithm} key receivers use to check this "
            "server's signature on your mail.", required=True))
    recs.append(Record(
        f"_dmarc.{d}", "TXT", f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{d}",
        "DMARC (RFC 7489): tells receivers to put mail that fails SPF and DKIM in spam "
        "(quarantine rather than reject, so a misconfigured forwarder costs a spam folder "
        "visit, not a lost message) and to send reports to postmaster.", required=False))
    recs.append(Record(
        f"_mta-sts.{d}", "TXT", f"v=STSv1; id={mta_sts_id(config)}",
        f"MTA-STS (RFC 8461): announces the policy that senders must use verified TLS to {h}; "
        "the id changes whenever the policy does.", required=False))
    recs.append(Record(
        f"mta-sts.{d}", "CNAME", f"{h}.",
        "The host senders fetch the MTA-STS policy from, over HTTPS; this server serves it.",
        required=False))
    recs.append(Record(
        f"_smtp._tls.{d}", "TXT", f"v=TLSRPTv1; rua=mailto:postmaster@{d}",
        "TLS reporting (RFC 8460): senders report TLS problems delivering to you to "
        "postmaster.", required=False))
    recs.append(_tlsa_record(config, h, cert_spki_sha256))
    recs.append(Record(
        f"autoconfig.{d}", "CNAME", f"{h}.",
        "Lets Thunderbird and other mail apps find their settings from the address alone.",
        required=False))
    recs.append(Record(
        f"autodiscover.{d}", "CNAME", f"{h}.",
        "Lets Outlook and other Microsoft mail apps find their settings.", required=False))
    recs += _srv_records(config, d, h)
    recs += _caa_records(config, d)
    return recs


def _address_records(config: Config, h: str) -> list[Record]:
    ipv4, ipv6 = config.server.public_ipv4, config.server.public_ipv6
    recs = [Record(h, "A", ipv4 or None,
                   f"The address of the mail host {h}, the target of your MX.", required=True,
                   host=True)]
    if ipv6:
        recs.append(Record(h, "AAAA", ipv6, f"The IPv6 address of the mail host {h}.",
                           required=False, host=True))
    return recs


def _tlsa_record(config: Config, h: str, spki: str | None) -> Record:
    if spki is not None:
        condition = "only if your zone is DNSSEC-signed"
    elif config.acme.enabled and not config.acme.reuse_key:
        condition = ("only if your zone is DNSSEC-signed, and not with [acme] reuse_key = "
                     "false: the key would change at every renewal")
    else:
        condition = ("only if your zone is DNSSEC-signed, once the certificate from the CA "
                     "is issued (its key is kept across renewals)")
    # RFC 7672 §3.1: DANE-EE(3) SPKI(1) SHA-256(1) survives renewals with the same key and
    # needs no CA chain; the record sits at the MX host's name, not the domain's.
    return Record(
        f"_25._tcp.{h}", "TLSA", f"3 1 1 {spki}" if spki else None,
        "DANE (RFC 7672): pins this server's TLS key so senders that check it never deliver "
        "to an impostor or in the clear. A wrong TLSA record stops their mail.",
        required=False, condition=condition, host=True)


def _srv_records(config: Config, d: str, h: str) -> list[Record]:
    recs = []
    for label, service, priority in SRV_SERVICES:
        listen = getattr(config.listen, service)
        if listen is None:
            # RFC 6186 §4: target "." says the service is not offered, so apps stop looking.
            value, purpose = "0 0 0 .", f"Tells mail apps that {service} is not offered."
        else:
            value = f"{priority} 1 {listen.port} {h}."
            purpose = f"Lets mail apps find {service} on {h} port {listen.port} (RFC 6186)."
        recs.append(Record(f"{label}.{d}", "SRV", value, purpose, required=False))
    return recs


def _caa_records(config: Config, d: str) -> list[Record]:
    if not config.acme.enabled:
        return []  # a certificate brought by the owner: its CA is theirs to name
    issuer = ca_domain(config)
    if issuer:
        return [Record(d, "CAA", f'0 issue "{issuer}"',
                       f"CAA (RFC 8659): only {issuer} may issue certificates for {d} and the "
                       "names under it, which this server gets from it.", required=False)]
    return [Record(d, "CAA", None,
                   f"CAA (RFC 8659): only your CA may issue certificates for {d}. Put the "
                   f"CAA domain name your CA ({config.acme.directory}) documents in the "
                   "record; with a CAA record that does not name it, renewals fail.",
                   required=False)]


# --- zone file ---


def _relative(name: str, origin: str) -> str | None:
    """Name relative to origin ("@" for the apex), or None when outside it."""
    if name == origin:
        return "@"
    if name.endswith("." + origin):
        return name[:-len(origin) - 1]
    return None


def zone_file(records: list[Record], origin: str) -> str:
    """A BIND zone-file fragment for ``origin``: records outside it (the mail host in another
    zone) and values mailstead cannot know become comments for the owner to act on."""
    origin = origin.lower().rstrip(".")
    lines = [f"; DNS records for {origin}, written by mailstead", f"$ORIGIN {origin}.",
             f"$TTL {TTL}"]
    outside = []
    for rec in records:
        rel = _relative(rec.name, origin)
        if rel is None:
            outside.append(rec)
            continue
        lines.append(_zone_line(rec, rel))
    if outside:
        lines.append("; These belong in the zone of the mail host's name, not in this one:")
        lines += ["; " + _zone_line(rec, rec.name + ".").lstrip("; ") for rec in outside]
    return "\n".join(lines) + "\n"


def _zone_line(rec: Record, name: str) -> str:
    line = f"{name:<32} IN {rec.rtype:<5} {rec.rdata_text()}"
    if rec.value is None:
        return f"; {line}  ; fill in: not known to mailstead"
    if rec.condition:
        line += f"  ; {rec.condition}"
    return line
