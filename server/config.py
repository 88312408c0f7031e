"""The typed configuration: one TOML file, loaded once into frozen dataclasses, validated at load.

Every option is a dataclass field whose metadata carries its documentation and its check, so
``mailstead config describe`` and ``docs/config.md`` are generated from the same place the loader
reads. Nothing here is read at import time; the loaded ``Config`` is passed in explicitly.
Every outside endpoint (DNS servers, the outbound SMTP port) is an option, so tests can point the
server at loopback instead of patching code.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from server.addresses import AddressError, normalize_domain

SERVICES = ("mx", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http", "admin")

SERVICE_DOCS = {
    "mx": "SMTP MX receiver for mail to your domains (STARTTLS offered)",
    "submission": "authenticated mail submission, STARTTLS (RFC 6409)",
    "submissions": "authenticated mail submission, implicit TLS (RFC 8314)",
    "imap": "IMAP, STARTTLS required before login",
    "imaps": "IMAP, implicit TLS",
    "pop3": "POP3, STLS required before login",
    "pop3s": "POP3, implicit TLS",
    "http": "HTTP: ACME challenges, redirects to HTTPS, well-known endpoints",
    "admin": "HTTPS admin panel and client set-up",
}
PRODUCTION_PORTS = {
    "mx": 25, "submission": 587, "submissions": 465, "imap": 143, "imaps": 993,
    "pop3": 110, "pop3s": 995, "http": 80, "admin": 443,
}
DEV_PORTS = {
    "mx": 2525, "submission": 2587, "submissions": 2465, "imap": 2143, "imaps": 2993,
    "pop3": 2110, "pop3s": 2995, "http": 8080, "admin": 8443,
}


class ConfigError(Exception):
    """The config is invalid; ``problems`` lists every ``[section] key: reason`` found."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = [f"invalid configuration in {self.path}:"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def option(default: Any, doc: str, check=None, required: bool = False) -> Any:
    meta = {"doc": doc, "check": check, "required": required}
    if isinstance(default, list | tuple):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


# --- value checks: each takes the TOML value, returns the typed value or raises ValueError ---


def _int_range(lo: int, hi: int | None = None):
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return check


def _workers(value: Any) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, str):
        raise ValueError(f'must be "auto" or a number of processes, got {value!r}')
    return _int_range(0, 64)(value)


def worker_count(setting: int | str) -> int:
    """``[smtp] workers`` or ``[imap] parse_workers`` as a number: "auto" is one per usable
    CPU (at most 8), none with only one."""
    if setting != "auto":
        return int(setting)
    cpus = len(os.sched_getaffinity(0))
    return min(cpus, 8) if cpus >= 2 else 0


def _positive_float(value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return float(value)


def _non_negative_float(value: Any) -> float:
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return _positive_float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _relay(value: Any) -> Listen | None:
    text = _string(value).strip()
    if not text:
        return None
    host, port = parse_host_port(text, default_port=587)
    if not host:
        raise ValueError(f"missing host in {text!r}")
    return Listen(host, port)


def _ip_version(version: int):
    def parse(value: Any) -> str:
        value = _string(value)
        if not value:
            return ""
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"must be an IPv{version} address, got {value!r}") from None
        if addr.version != version:
            raise ValueError(f"must be an IPv{version} address, got {value!r}")
        return str(addr)
    return parse


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _hostname(value: Any) -> str:
    try:
        name = normalize_domain(_string(value))
    except AddressError as err:
        raise ValueError(f"must be a fully qualified host name ({err})") from None
    if "." not in name:
        raise ValueError(f"must be a fully qualified host name, got {value!r}")
    return name


def _path(value: Any) -> Path:
    if not _string(value):
        raise ValueError("must not be empty")
    return Path(value)


def _choice(*choices: str):
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    return check


def parse_nameservers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f'must be a list of "ip" or "ip:port" strings, got {value!r}')
    out = []
    for item in value:
        host, port = parse_host_port(_string(item), default_port=53)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address (with optional :port)") from None
        out.append(format_host_port(host, port))
    return tuple(out)


def _delimiter(value: Any) -> str:
    value = _string(value)
    if len(value) > 1 or (value and (value.isalnum() or value in '.@"\\ ')):
        raise ValueError(f"must be one punctuation character such as '+', or empty; got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Listen:
    host: str | None
    """IP address to bind, or None for every address of the machine."""
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host or "*", self.port)


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``"127.0.0.1:25"``, ``"[::1]:25"``, ``"*:25"``; a missing port needs ``default_port``."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unterminated IPv6 address in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected :port after ] in {text!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        host, port_text = text, ""  # bare IPv6
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"missing :port in {text!r}")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port must be 1-65535 in {text!r}")
    return host, int(port_text)


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(value: Any) -> Listen | None:
    text = _string(value).strip()
    if not text:
        return None
    host, port = parse_host_port(text)
    if host in ("", "*"):
        return Listen(None, port)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f'host must be an IP address or "*", got {host!r}') from None
    return Listen(host, port)


# --- the sections ---


@dataclass(frozen=True, slots=True)
class ServerSection:
    hostname: str = option(
        "", "The mail host's fully qualified name: the SMTP greeting, the TLS certificate "
        "name and the MX target of your domains.", _hostname, required=True)
    data_dir: Path = option(
        Path("."), "Directory holding the account database, Maildirs, keys, certificates and "
        "queue. A relative path is taken from the config file's directory.", _path)
    public_ipv4: str = option(
        "", "The server's public IPv4 address, for the A record the DNS page asks for; empty = "
        "not known (the page then shows what DNS has).", _ip_version(4))
    public_ipv6: str = option(
        "", "The server's public IPv6 address, for the AAAA record; empty = none.",
        _ip_version(6))


_listen_fields = {
    name: (Listen | None, option(None, f"{SERVICE_DOCS[name]}. \"host:port\", \"[v6]:port\" or "
                                 f"\"*:port\" (all addresses); empty or absent = off. "
                                 f"Usual port: {PRODUCTION_PORTS[name]}.", parse_listen))
    for name in SERVICES
}
ListenSection = dataclasses.make_dataclass(
    "ListenSection", [(n, t, f) for n, (t, f) in _listen_fields.items()], frozen=True, slots=True
)
ListenSection.__doc__ = "Where each service listens."
ListenSection.__module__ = __name__


@dataclass(frozen=True, slots=True)
class TLSSection:
    cert_file: Path = option(
        Path("tls/cert.pem"), "PEM certificate chain served by every TLS listener "
        "(relative to data_dir).", _path)
    key_file: Path = option(
        Path("tls/key.pem"), "PEM private key of cert_file (relative to data_dir).", _path)


@dataclass(frozen=True, slots=True)
class DNSSection:
    nameservers: tuple[str, ...] = option(
        (), 'DNS servers to query, as "ip" or "ip:port"; empty = the system resolver. '
        "Tests point this at a loopback server.", parse_nameservers)
    timeout: float = option(5.0, "Seconds a DNS lookup may take in all.", _positive_float)


@dataclass(frozen=True, slots=True)
class OutboundSection:
    mx_port: int = option(25, "TCP port of remote MX hosts for outbound delivery "
                          "(tests point it at a loopback sink).", _int_range(1, 65535))
    relay: Listen | None = option(
        None, 'Smarthost "host:port" to send all outbound mail through, for networks that '
        "block port 25; empty = deliver directly to each domain's MX.", _relay)
    relay_username: str = option("", "Login for the smarthost (AUTH PLAIN/LOGIN over TLS).",
                                 _string)
    relay_password: str = option("", "Password for the smarthost.", _string)
    relay_tls: str = option(
        "starttls", "TLS to the smarthost: starttls (port 587), tls (implicit, port 465).",
        _choice("starttls", "tls"))
    workers: int = option(20, "Deliveries in progress at once.", _int_range(1, 1000))
    connect_timeout: float = option(30.0, "Seconds to connect to a remote MX.", _positive_float)
    expiry: float = option(
        5 * 86400.0, "Seconds a message is retried before it bounces (default 5 days).",
        _positive_float)
    delay_warning: float = option(
        4 * 3600.0, "Seconds after which the sender is told a message is delayed; 0 = never.",
        _non_negative_float)
    https_port: int = option(443, "TCP port for fetching MTA-STS policies (tests point it at "
                             "loopback).", _int_range(1, 65535))
    ca_file: str = option(
        "", "Extra CA certificates (PEM) trusted for outbound TLS and MTA-STS, besides the "
        "system's (tests use a private CA).", _string)


@dataclass(frozen=True, slots=True)
class SMTPSection:
    max_message_size: int = option(
        50 * 1024 * 1024, "Largest message accepted, in bytes (advertised as SIZE).",
        _int_range(1024))
    max_recipients: int = option(
        100, "Recipients per transaction; more get 452 4.5.3 (RFC 5321 §4.5.3.1.8 asks for "
        "at least 100).", _int_range(1, 10000))
    idle_timeout: float = option(
        300.0, "Seconds a client may stay silent before the connection is closed with "
        "421 (RFC 5321 §4.5.3.2.7).", _positive_float)
    max_errors: int = option(
        10, "Error replies a connection may get before it is closed with 421 4.7.0; "
        "stops address harvesting and confused clients looping.", _int_range(1, 1000))
    max_connections: int = option(
        1000, "Simultaneous connections per SMTP service; more are answered 421 4.7.0 and "
        "closed, so a flood cannot exhaust memory.", _int_range(1, 100000))
    shutdown_grace: float = option(
        30.0, "On SIGTERM, seconds to let transactions in progress finish before closing.",
        _positive_float)
    workers: int | str = option(
        "auto", "Worker processes for the MX (port 25): the daemon accepts and applies the "
        "abuse limits, the workers receive and store the mail, so inbound mail uses more than "
        "one core. 0 receives in the daemon's own process; \"auto\" starts one per CPU (at "
        "most 8) on a machine with two or more, else none.", _workers)
    parse_workers_from: int = option(
        10000, "Messages a FETCH must ask for to start the parse helpers: starting them takes "
        "about a third of a second, the time the daemon takes to parse some 10,000 headers. "
        "Once running, they serve any FETCH of more than a few dozen.", _int_range(1, 10**9))


@dataclass(frozen=True, slots=True)
class IMAPSection:
    idle_timeout: float = option(
        1800.0, "Seconds a client may stay silent before it is logged out; RFC 3501 §5.4 asks "
        "for at least 30 minutes. IDLE sessions are told to renew before this.", _positive_float)
    max_literal: int = option(
        64 * 1024 * 1024, "Largest literal (e.g. an APPENDed message) accepted, in bytes; "
        "a larger one is refused before it is read.", _int_range(1024))
    max_connections: int = option(
        1000, "Simultaneous IMAP connections per listener; more are refused with BYE.",
        _int_range(1, 100000))
    login_timeout: float = option(
        60.0, "Seconds a connection may take to log in before it is closed.", _positive_float)
    max_connections_per_user: int = option(
        50, "Simultaneous logged-in IMAP sessions per user (a phone, a laptop and a tablet "
        "each open several).", _int_range(1, 10000))
    parse_workers: int | str = option(
        "auto", "Helper processes that compute ENVELOPE and BODYSTRUCTURE when a client first "
        "fetches them for many messages (a first sync of a big folder), so that parsing "
        "uses more than one core and does not hold up other sessions. Started when needed, "
        "stopped after a minute idle. 0 parses in the daemon; \"auto\" is one per CPU (at "
        "most 8) on a machine with two or more, else none.", _workers)
    parse_workers_from: int = option(
        10000, "Messages a FETCH must ask for to start the parse helpers: starting them takes "
        "about a third of a second, the time the daemon takes to parse some 10,000 headers. "
        "Once running, they serve any FETCH of more than a few dozen.", _int_range(1, 10**9))


@dataclass(frozen=True, slots=True)
class POP3Section:
    idle_timeout: float = option(
        600.0, "Seconds a logged-in POP3 client may stay silent (RFC 1939 §3: at least 10 "
        "minutes).", _positive_float)
    login_timeout: float = option(
        60.0, "Seconds a connection may take to log in before it is closed.", _positive_float)
    max_connections: int = option(
        500, "Simultaneous POP3 connections per listener.", _int_range(1, 100000))


@dataclass(frozen=True, slots=True)
class SubmissionSection:
    reveal_client_ip: bool = option(
        False, "Put the sending client's IP address and HELO name in the Received header of "
        "submitted mail. Off: recipients do not learn where the sender was.", _bool)


LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


def _url(value: Any) -> str:
    text = _string(value)
    if not text.startswith("https://"):
        raise ValueError(f"must be an https:// URL, got {value!r}")
    return text


def _name_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of names, got {value!r}")
    out = []
    for item in value:
        try:
            out.append(normalize_domain(_string(item)))
        except AddressError as err:
            raise ValueError(f"{item!r}: {err}") from None
    return tuple(out)


def _prefix_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.isascii()
                                              and v.replace("-", "").isalnum() for v in value):
        raise ValueError(f'must be a list of host labels such as ["mta-sts"], got {value!r}')
    return tuple(v.lower() for v in value)


@dataclass(frozen=True, slots=True)
class ACMESection:
    enabled: bool = option(
        False, "Get and renew certificates automatically (RFC 8555); until the first one is "
        "issued the self-signed certificate serves.", _bool)
    directory: str = option(LETSENCRYPT, "ACME directory URL (default Let's Encrypt).", _url)
    staging: bool = option(
        False, "Use Let's Encrypt's staging directory instead (untrusted certificates, "
        "generous rate limits): for trying things out.", _bool)
    email: str = option("", "Contact address for the CA (expiry warnings); default "
                        "postmaster@<first domain>.", _string)
    ca_bundle: str = option("", "PEM file of CAs to trust for the ACME server itself (a test "
                            "CA such as Pebble's); empty = the system's.", _string)
    challenge: str = option(
        "http-01", "Challenge tried first: http-01 (needs port 80) or tls-alpn-01 (needs "
        "port 443); the other is tried when it fails.", _choice("http-01", "tls-alpn-01"))
    domain_names: tuple[str, ...] = option(
        ("mta-sts", "autoconfig", "autodiscover"), "Labels put before each of your domains to "
        "add those names to the certificate (mta-sts.example.com, ...). Names that fail "
        "validation are dropped, so the host name alone still gets its certificate.",
        _prefix_list)
    extra_names: tuple[str, ...] = option(
        (), "More host names for the certificate.", _name_list)
    reuse_key: bool = option(
        True, "Keep the certificate's private key across renewals, so a published TLSA "
        "(DANE) record stays valid. Turn off to get a new key with every certificate.", _bool)
    eab_kid: str = option("", "External account binding key id, if the CA requires one.",
                          _string)
    eab_hmac_key: str = option("", "External account binding HMAC key (base64url).", _string)


@dataclass(frozen=True, slots=True)
class WebSection:
    mta_sts_mode: str = option(
        "testing", "MTA-STS policy mode published for your domains (RFC 8461): testing "
        "(report only), enforce (senders must use verified TLS to us) or none.",
        _choice("testing", "enforce", "none"))
    mta_sts_max_age: int = option(
        604800, "Seconds senders may cache the MTA-STS policy (at most 31557600).",
        _int_range(0, 31557600))
    session_hours: float = option(
        12.0, "Hours an admin-panel login lasts without activity.", _positive_float)
    totp_issuer: str = option(
        "mailstead", "Name shown in authenticator apps for the panel's second factor.",
        _string)


def _networks(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f'must be a list of addresses or networks such as ["192.0.2.0/24"], '
                         f"got {value!r}")
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_network(_string(item), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(out)


def _optional_http_url(value: Any) -> str:
    value = _string(value)
    if value and not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _non_negative_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 \
            or not math.isfinite(value):
        raise ValueError(f"must be a number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class InboundSection:
    spf: bool = option(True, "Check SPF (RFC 7208) of the MAIL FROM and HELO names.", _bool)
    dkim: bool = option(True, "Verify every DKIM signature (RFC 6376, RSA and Ed25519).", _bool)
    dmarc: bool = option(True, "Apply the sender domain's DMARC policy (RFC 7489).", _bool)
    arc: bool = option(
        True, "Verify ARC chains (RFC 8617) and seal mail forwarded to external aliases.", _bool)
    dmarc_reject: str = option(
        "reject", "What to do with mail failing DMARC when its domain says p=reject: reject "
        "(550 5.7.1 at the end of DATA) or junk (deliver into the Junk folder).",
        _choice("reject", "junk"))


@dataclass(frozen=True, slots=True)
class SpamSection:
    rspamd_url: str = option(
        "", "rspamd's normal worker URL (e.g. http://127.0.0.1:11333) to score every inbound "
        "message; empty = no rspamd. When rspamd cannot be reached mail is accepted unscored "
        "(X-Spam-Status: unknown), never refused or lost.", _optional_http_url)
    rspamd_controller_url: str = option(
        "", "rspamd's controller URL (e.g. http://127.0.0.1:11334), where training goes; "
        "empty = rspamd_url.", _optional_http_url)
    rspamd_password: str = option(
        "", "rspamd controller password (its worker-controller.inc `password`), for training.",
        _string)
    rspamd_timeout: float = option(
        20.0, "Seconds a scan or a training request to rspamd may take.", _positive_float)
    junk_score: float = option(
        6.0, "rspamd score from which mail is filed into Junk (rspamd's own \"add header\" and "
        "\"rewrite subject\" actions file it there too).", _non_negative_float)
    reject_score: float = option(
        15.0, "rspamd score from which mail is refused (550 5.7.1); rspamd's own \"reject\" "
        "action refuses it too.", _non_negative_float)
    learn: bool = option(
        True, "Teach rspamd when a user moves mail into Junk (spam) or out of it (ham, unless "
        "into Trash); needs rspamd_url and the controller's password.", _bool)
    dnsbl_zones: tuple[str, ...] = option(
        (), 'DNS blocklists to check the connecting IP against, e.g. ["zen.spamhaus.org"]; a '
        "listed client is refused (554 5.7.1). A lookup that times out counts as not listed. "
        "Empty = off.", _name_list)
    greylisting: bool = option(
        False, "Answer a new (client network, sender, recipient) with 451 4.7.1 once; real "
        "servers retry, most spam software does not. Signed-in and [abuse] allow clients "
        "are never greylisted.", _bool)
    greylist_delay: float = option(
        300.0, "Seconds before a greylisted triple is accepted on retry.", _positive_float)
    greylist_auto_allow: int = option(
        5, "Client networks (IPv4 /24, IPv6 /64) that passed greylisting this many times are "
        "not greylisted any more; 0 = never.", _int_range(0))


@dataclass(frozen=True, slots=True)
class AbuseSection:
    ban_after: int = option(
        10, "Failed logins (submission, IMAP, POP3, admin panel and API) from one IP (IPv6: "
        "its /64) within 15 minutes that get it banned from every service; 0 = never ban "
        "(the growing login delay still applies).", _int_range(0))
    ban_time: float = option(
        3600.0, "Seconds a ban lasts. Bans are kept in abuse-bans.json in the data dir, so "
        "a restart does not lift them.", _positive_float)
    allow: tuple[str, ...] = option(
        ("127.0.0.0/8", "::1/128"), "Addresses and networks never banned nor held to the "
        "per-IP connection limits (the login delay still applies), e.g. your home network.",
        _networks)
    fail2ban_log: str = option(
        "", "Also write one line per failed login and per ban to this file (relative: in "
        "the data dir), in the format the shipped fail2ban filter matches (docs/security.md); "
        "empty = only the normal log, which the filter matches too.", _string)
    max_connections_per_ip: int = option(
        50, "Connections one IP (IPv6: its /64) may have open at once on each service (mx, "
        "submission, submissions, imap, imaps, pop3, pop3s, admin); more are refused with a "
        "temporary error. Mail apps open several IMAP connections per account and device.",
        _int_range(1, 100000))
    connection_rate_per_ip: int = option(
        60, "New connections one IP (IPv6: its /64) may open per minute on each service; "
        "more are refused with a temporary error.", _int_range(1))
    max_messages_per_hour: int = option(
        500, "Messages one signed-in user may send per hour (submission; sliding window); "
        "more get 451 4.7.1 at MAIL FROM.", _int_range(1))
    max_recipients_per_hour: int = option(
        1000, "Recipients one signed-in user may send to per hour (submission; sliding "
        "window); more get 452 4.5.3 at RCPT TO.", _int_range(1))


@dataclass(frozen=True, slots=True)
class DKIMSection:
    ed25519: bool = option(
        False, "Also sign with an Ed25519 key (RFC 8463), as a second signature beside "
        "RSA-2048.", _bool)


@dataclass(frozen=True, slots=True)
class AccountsSection:
    recipient_delimiter: str = option(
        "+", "Separator of plus-addresses: mail to user+tag@domain reaches user@domain. "
        "Empty turns plus-addressing off.", _delimiter)
    auth_failure_delay: float = option(
        1.0, "Seconds every login waits, on every service, once an IP (IPv6: its /64) or an "
        "account has failed twice in 15 minutes; doubling with each further failure, up to "
        "30 s. The wait comes before the password is checked.", _positive_float)
    min_password_length: int = option(10, "Shortest password accepted for a mailbox.",
                                      _int_range(1, 1024))
    argon2_time_cost: int = option(3, "argon2id passes; raising it rehashes each password at "
                                   "its next login.", _int_range(1, 100))
    argon2_memory_kib: int = option(65536, "argon2id memory in KiB per hash.",
                                    _int_range(8, 4 * 1024 * 1024))
    argon2_parallelism: int = option(4, "argon2id lanes.", _int_range(1, 64))


@dataclass(frozen=True, slots=True)
class LogSection:
    level: str = option("info", "Log level: debug, info, warning or error.",
                        _choice("debug", "info", "warning", "error"))


SECTIONS: dict[str, type] = {
    "server": ServerSection,
    "listen": ListenSection,
    "tls": TLSSection,
    "dns": DNSSection,
    "outbound": OutboundSection,
    "smtp": SMTPSection,
    "submission": SubmissionSection,
    "imap": IMAPSection,
    "pop3": POP3Section,
    "dkim": DKIMSection,
    "acme": ACMESection,
    "web": WebSection,
    "inbound": InboundSection,
    "spam": SpamSection,
    "abuse": AbuseSection,
    "accounts": AccountsSection,
    "log": LogSection,
}


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    server: ServerSection
    listen: Any  # ListenSection
    tls: TLSSection
    dns: DNSSection
    outbound: OutboundSection
    smtp: SMTPSection
    submission: SubmissionSection
    imap: IMAPSection
    pop3: POP3Section
    dkim: DKIMSection
    acme: ACMESection
    web: WebSection
    inbound: InboundSection
    spam: SpamSection
    abuse: AbuseSection
    accounts: AccountsSection
    log: LogSection

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def data_path(self, relative: Path | str) -> Path:
        return self.server.data_dir / relative

    @property
    def db_path(self) -> Path:
        return self.data_path("accounts.sqlite3")

    @property
    def mail_root(self) -> Path:
        return self.data_path("mail")

    @property
    def dkim_dir(self) -> Path:
        return self.data_path("dkim")

    @property
    def queue_dir(self) -> Path:
        return self.data_path("queue")

    @property
    def cert_file(self) -> Path:
        return self.data_path(self.tls.cert_file)

    @property
    def key_file(self) -> Path:
        return self.data_path(self.tls.key_file)

    def listeners(self) -> dict[str, Listen]:
        """The services that are on, with their addresses."""
        out = {}
        for name in SERVICES:
            addr = getattr(self.listen, name)
            if addr is not None:
                out[name] = addr
        return out


def _load_section(name: str, cls: type, table: Any, problems: list[str]) -> Any:
    if not isinstance(table, dict):
        problems.append(f"[{name}]: must be a table")
        table = {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known:
            problems.append(f"[{name}] {key}: unknown key (see 'mailstead config describe')")
    values = {}
    for key, fld in known.items():
        if key not in table:
            if fld.metadata.get("required"):
                problems.append(f"[{name}] {key}: required")
            continue
        try:
            values[key] = fld.metadata["check"](table[key])
        except ValueError as err:
            problems.append(f"[{name}] {key}: {err}")
    try:
        return cls(**values)
    except TypeError:  # only when problems were recorded above
        return cls()


def _any(host: str | None) -> bool:
    """True for an address that binds every interface (and so clashes with any other)."""
    return host is None or ipaddress.ip_address(host).is_unspecified


def parse_config(text: str, path: Path) -> Config:
    """Parse and validate config ``text`` as if read from ``path``."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, [f"not valid TOML: {err}"]) from None
    problems: list[str] = []
    for key in raw:
        if key not in SECTIONS:
            problems.append(f"[{key}]: unknown section (see 'mailstead config describe')")
    sections = {
        name: _load_section(name, cls, raw.get(name, {}), problems)
        for name, cls in SECTIONS.items()
    }
    seen: dict[tuple[str | None, int], str] = {}
    for svc in SERVICES:
        addr = getattr(sections["listen"], svc)
        if addr is None:
            continue
        for (host, port), other in seen.items():
            if port == addr.port and (host == addr.host or _any(host) or _any(addr.host)):
                problems.append(f"[listen] {svc}: {addr} clashes with [listen] {other}")
        seen[(addr.host, addr.port)] = svc
    if problems:
        raise ConfigError(path, problems)
    server = sections["server"]
    data_dir = server.data_dir
    if not data_dir.is_absolute():
        data_dir = (path.parent / data_dir).resolve()
    sections["server"] = dataclasses.replace(server, data_dir=data_dir)
    return Config(path=path, **sections)


def load_config(path: Path | str) -> Config:
    path = Path(path).absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(path, [f"cannot read: {err.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(path, ["not UTF-8 text"]) from None
    return parse_config(text, path)


# --- writing and describing ---


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if value is None:
        return '""'
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def render_config(hostname: str, data_dir: Path, listen: dict[str, str],
                  extra: dict[str, dict[str, Any]] | None = None) -> str:
    """The config file ``mailstead init`` writes: the required keys plus every listener."""
    lines = ["# mailstead configuration. Every key: 'mailstead config describe'.", ""]
    lines += ["[server]", f"hostname = {_toml_value(hostname)}",
              f"data_dir = {_toml_value(str(data_dir))}", "", "[listen]"]
    lines += [f"{svc} = {_toml_value(listen.get(svc, ''))}" for svc in SERVICES]
    for section, values in (extra or {}).items():
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


_KIND_NAMES = {str: "string", int: "integer", float: "number", Path: "path", bool: "boolean",
               tuple[str, ...]: "list of strings", int | str: '"auto" or integer'}


def describe(markdown: bool = False) -> str:
    """Every section and key with its default and meaning."""
    out: list[str] = []
    if markdown:
        out += ["# Configuration reference", "",
                "Generated by `mailstead config describe --markdown`; do not edit by hand.",
                "The file is TOML. A missing key takes its default; an unknown key or a bad "
                "value stops the server with an error naming the key.", ""]
    for name, cls in SECTIONS.items():
        hints = get_type_hints(cls)
        out.append(f"## [{name}]" if markdown else f"[{name}]")
        if markdown:
            out.append("")
            out.append("| key | default | meaning |")
            out.append("| --- | --- | --- |")
        for fld in dataclasses.fields(cls):
            default = "(required)" if fld.metadata.get("required") else _toml_value(fld.default)
            doc = fld.metadata["doc"]
            if markdown:
                out.append(f"| `{fld.name}` | `{default}` | {doc} |")
            else:
                kind = _KIND_NAMES.get(hints[fld.name], "host:port")
                out.append(f"  {fld.name} = {default}    # {kind}")
                out.append(f"      {doc}")
        out.append("")
    return "\n".join(out)
