"""Mail client auto-configuration: the documents Thunderbird, Outlook and Apple devices fetch
to set up an account from nothing but an address and a password.

Pure functions: the Config (and an address) in, document bytes out; the web layer serves them.
Every server entry comes from ``[listen]``: a service that is off is left out, and the ports
are the configured ones. The host is always ``[server] hostname``, the name the certificate
is made for.

- Thunderbird autoconfig, ``autoconfig_xml``:
  https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat
- Outlook autodiscover (POX), ``autodiscover_reply`` and its parts: [MS-OXDSCLI] and
  https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/pox-autodiscover-request-for-exchange
- Apple configuration profile, ``mobileconfig``: github.com/apple/device-management,
  mdm/profiles (TopLevel, com.apple.mail.managed).
"""

from __future__ import annotations

import plistlib
import uuid
import xml.etree.ElementTree as ET
import xml.parsers.expat
from collections.abc import Iterable
from dataclasses import dataclass

from server.addresses import AddressError, normalize_domain, parse_address

AUTOCONFIG_PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")
AUTOCONFIG_TYPE = "application/xml"
MOBILECONFIG_TYPE = "application/x-apple-aspen-config"

RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
OUTLOOK_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
MOBILESYNC_REQUEST_NS = \
    "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/requestschema/2006"
MOBILESYNC_SCHEMA = \
    "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
_SCHEMA_OF_REQUEST = {OUTLOOK_REQUEST_NS: OUTLOOK_SCHEMA, MOBILESYNC_REQUEST_NS: MOBILESYNC_SCHEMA}

# A real request is a few hundred bytes; anything near this is an attempt to make us parse.
MAX_AUTODISCOVER_REQUEST = 64 * 1024

# Autodiscover error codes ([MS-ASCMD] §2.2.3.64 for 600 and 601; 500 is what Exchange answers
# for an address it does not serve).
ERROR_UNKNOWN_ADDRESS = (500, "The e-mail address cannot be found.")
ERROR_INVALID_REQUEST = (600, "Invalid Request")
ERROR_NO_PROVIDER = (601, "Provider is not available")


@dataclass(frozen=True, slots=True)
class Endpoint:
    protocol: str
    """``imap``, ``pop3`` or ``smtp``: the names the autoconfig format uses."""
    port: int
    implicit_tls: bool
    """TLS from the first byte; otherwise STARTTLS (STLS for POP3), which we require."""


# Implicit TLS first in every list: RFC 8314 §3 recommends it over STARTTLS for both mail
# access and submission, and clients take the first entry that works.
_SERVICES = (
    ("imap", "imaps", True), ("imap", "imap", False),
    ("pop3", "pop3s", True), ("pop3", "pop3", False),
    ("smtp", "submissions", True), ("smtp", "submission", False),
)


def endpoints(config, protocol: str | None = None) -> list[Endpoint]:
    """The client-facing services that are on, preferred first; only ``protocol``'s if given."""
    out = []
    for proto, service, implicit in _SERVICES:
        listen = getattr(config.listen, service, None)
        if listen is not None and protocol in (None, proto):
            out.append(Endpoint(proto, listen.port, implicit))
    return out


def _preferred(config, protocol: str) -> Endpoint | None:
    found = endpoints(config, protocol)
    return found[0] if found else None


def _mailbox(email: str) -> str:
    """The address as clients should log in with it: validated, domain normalised. Parsing
    also keeps control characters out, which ElementTree would write unescaped (invalid XML)."""
    address = parse_address(email.strip())
    if address.is_literal:
        raise AddressError(f"{email!r}: an address literal has no mail settings")
    return str(address)


def _sub(parent: ET.Element, tag: str, text: str | int | None = None, **attrs) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = str(text)
    return element


def _xml_bytes(root: ET.Element) -> bytes:
    ET.indent(root)
    # ElementTree escapes &, < and > in text and quotes in attributes; the declaration is
    # written by hand so it says UTF-8 in the double quotes every client expects.
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "utf-8") + b"\n"


# --- Thunderbird ---


def autoconfig_xml(config, domain: str, email: str | None = None) -> bytes:
    """The ``clientConfig`` 1.1 document for ``domain``. ValueError for a bad domain, or when
    no incoming or no outgoing service is on.

    ``email`` (Thunderbird's ``emailaddress`` parameter, unchecked) is accepted but changes
    nothing: the username is the ``%EMAILADDRESS%`` placeholder, so one document serves every
    address of the domain and no address from a query string ever lands in our output."""
    del email
    domain = normalize_domain(domain)
    servers = endpoints(config)
    if not any(s.protocol == "smtp" for s in servers) or all(s.protocol == "smtp"
                                                             for s in servers):
        raise ValueError("no incoming or no outgoing mail service is on")
    root = ET.Element("clientConfig", version="1.1")
    provider = _sub(root, "emailProvider", id=domain)
    _sub(provider, "domain", domain)
    _sub(provider, "displayName", f"{domain} mail")
    _sub(provider, "displayShortName", domain)
    for server in servers:
        tag = "outgoingServer" if server.protocol == "smtp" else "incomingServer"
        entry = _sub(provider, tag, type=server.protocol)
        _sub(entry, "hostname", config.server.hostname)
        _sub(entry, "port", server.port)
        _sub(entry, "socketType", "SSL" if server.implicit_tls else "STARTTLS")
        _sub(entry, "username", "%EMAILADDRESS%")
        # The password goes inside TLS (we never offer AUTH before it), so plain is safe;
        # "password-encrypted" would mean CRAM-MD5, which needs the password stored in clear.
        _sub(entry, "authentication", "password-cleartext")
        if server.protocol == "pop3":
            # Someone who picks POP3 on a laptop usually reads the same mail on a phone too:
            # leave it on the server rather than have the first client to look empty the INBOX.
            pop3 = _sub(entry, "pop3")
            _sub(pop3, "leaveMessagesOnServer", "true")
    return _xml_bytes(root)


# --- Outlook autodiscover (POX) ---


class AutodiscoverRefused(ValueError):
    """A request we do not parse or cannot use; the message says why (for the log)."""


@dataclass(frozen=True, slots=True)
class AutodiscoverRequest:
    email: str
    response_schema: str
    """The AcceptableResponseSchema: which provider is asked for (Outlook or ActiveSync)."""


class _Forbidden(Exception):
    pass


def _refuse_dtd(*_args) -> None:
    raise _Forbidden("DOCTYPE not allowed")


def _parse_xml(body: bytes) -> ET.Element:
    """Parse with expat directly so that any DTD is refused before it is read: no entity
    expansion (billion laughs), no external entities (XXE). An autodiscover request never
    has a DOCTYPE, so refusing one loses nothing; defusedxml does the same."""
    builder = ET.TreeBuilder()
    parser = xml.parsers.expat.ParserCreate(namespace_separator="}")

    def start(tag: str, attrs: dict) -> None:
        builder.start("{" + tag if "}" in tag else tag, attrs)

    def end(tag: str) -> None:
        builder.end("{" + tag if "}" in tag else tag)

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_dtd
    try:
        parser.Parse(body, True)
    except _Forbidden as err:
        raise AutodiscoverRefused(str(err)) from None
    except xml.parsers.expat.ExpatError as err:
        raise AutodiscoverRefused(f"not well-formed XML: {err}") from None
    return builder.close()


def _local(tag: str) -> tuple[str, str]:
    namespace, _, name = tag[1:].partition("}") if tag.startswith("{") else ("", "", tag)
    return namespace, name


def _child_text(parent: ET.Element, name: str) -> str | None:
    # Matched by local name: clients disagree on whether children repeat the namespace.
    for child in parent:
        if _local(child.tag)[1] == name:
            return (child.text or "").strip()
    return None


def read_autodiscover_request(body: bytes) -> AutodiscoverRequest:
    """The address and wanted schema of a POX request (Outlook's or ActiveSync's);
    AutodiscoverRefused for anything else."""
    if len(body) > MAX_AUTODISCOVER_REQUEST:
        raise AutodiscoverRefused(f"request larger than {MAX_AUTODISCOVER_REQUEST} bytes")
    root = _parse_xml(body)
    namespace, name = _local(root.tag)
    if name != "Autodiscover":
        raise AutodiscoverRefused(f"root element is {name}, not Autodiscover")
    request = next((c for c in root if _local(c.tag)[1] == "Request"), None)
    if request is None:
        raise AutodiscoverRefused("no Request element")
    email = _child_text(request, "EMailAddress")
    if not email:
        raise AutodiscoverRefused("no EMailAddress")
    try:
        email = _mailbox(email)
    except AddressError as err:
        raise AutodiscoverRefused(str(err)) from None
    schema = _child_text(request, "AcceptableResponseSchema") or \
        _SCHEMA_OF_REQUEST.get(namespace, "")
    return AutodiscoverRequest(email, schema)


def parse_autodiscover_request(body: bytes) -> str | None:
    """The EMailAddress of a POX autodiscover request, or None when it is refused (too large,
    a DOCTYPE, not well-formed, not an autodiscover request, no valid address)."""
    try:
        return read_autodiscover_request(body).email
    except AutodiscoverRefused:
        return None


def _protocol(account: ET.Element, config, server: Endpoint, login: str) -> None:
    protocol = _sub(account, "Protocol")
    _sub(protocol, "Type", server.protocol.upper())
    _sub(protocol, "Server", config.server.hostname)
    _sub(protocol, "Port", server.port)
    _sub(protocol, "LoginName", login)
    _sub(protocol, "DomainRequired", "off")
    _sub(protocol, "SPA", "off")  # NTLM; we take the password inside TLS instead
    _sub(protocol, "SSL", "on")
    _sub(protocol, "AuthRequired", "on")
    if server.protocol == "smtp":
        _sub(protocol, "UsePOPAuth", "on")  # the same login as for reading mail
    # [MS-OXDSCLI] Encryption element: when present it overrides SSL, and "TLS" means
    # STARTTLS. SSL=on alone means implicit TLS, which would fail on 587 or 143.
    _sub(protocol, "Encryption", "SSL" if server.implicit_tls else "TLS")


def autodiscover_xml(config, email: str) -> bytes:
    """The Outlook (responseschema 2006a) settings for ``email``: IMAP, SMTP, then POP3, each
    at its preferred port. ValueError for a bad address or no incoming/outgoing service."""
    login = _mailbox(email)
    chosen = [_preferred(config, p) for p in ("imap", "smtp", "pop3")]
    if chosen[1] is None or (chosen[0] is None and chosen[2] is None):
        raise ValueError("no incoming or no outgoing mail service is on")
    root = ET.Element("Autodiscover", xmlns=RESPONSE_NS)
    response = _sub(root, "Response", xmlns=OUTLOOK_SCHEMA)
    account = _sub(response, "Account")
    _sub(account, "AccountType", "email")
    _sub(account, "Action", "settings")
    for server in chosen:
        if server is not None:
            _protocol(account, config, server, login)
    return _xml_bytes(root)


def autodiscover_error_xml(code: int, message: str) -> bytes:
    """An error response in the shape [MS-ASCMD] §6.4's schema gives both providers."""
    root = ET.Element("Autodiscover", xmlns=RESPONSE_NS)
    error = _sub(_sub(root, "Response"), "Error")
    _sub(error, "ErrorCode", code)
    _sub(error, "Message", message)
    _sub(error, "DebugData")
    return _xml_bytes(root)


def autodiscover_reply(config, body: bytes, domains: Iterable[str] | None = None) -> bytes:
    """What to answer a POSTed autodiscover request, always with HTTP 200 as Exchange does
    (clients read the error from the document). Settings only for Outlook's schema and, when
    ``domains`` is given, only for addresses in them; whether the mailbox exists is never
    told, so the endpoint cannot be used to probe for users. ActiveSync ("mobilesync")
    clients get error 601: we have no Exchange ActiveSync server to point them at, and a
    phone that hears so falls back to asking for IMAP settings."""
    try:
        request = read_autodiscover_request(body)
    except AutodiscoverRefused:
        return autodiscover_error_xml(*ERROR_INVALID_REQUEST)
    if request.response_schema != OUTLOOK_SCHEMA:
        return autodiscover_error_xml(*ERROR_NO_PROVIDER)
    if domains is not None and request.email.rpartition("@")[2] not in set(domains):
        return autodiscover_error_xml(*ERROR_UNKNOWN_ADDRESS)
    try:
        return autodiscover_xml(config, request.email)
    except ValueError:
        return autodiscover_error_xml(*ERROR_NO_PROVIDER)


# --- Apple configuration profile ---


def _reverse_dns(hostname: str) -> str:
    return ".".join(reversed(hostname.lower().split(".")))


def profile_uuids(hostname: str, email: str) -> tuple[str, str]:
    """The (profile, mail payload) UUIDs for an account: the same at every download, so
    installing the profile again replaces the account instead of adding a second one."""
    namespace = uuid.uuid5(uuid.NAMESPACE_DNS, hostname.lower())
    key = parse_address(email).key
    return (str(uuid.uuid5(namespace, f"profile:{key}")).upper(),
            str(uuid.uuid5(namespace, f"mail:{key}")).upper())


def mobileconfig(config, email: str, display_name: str | None = None,
                 password: str | None = None) -> bytes:
    """An XML-plist configuration profile with one ``com.apple.mail.managed`` payload (IMAP,
    or POP3 when IMAP is off). With ``password`` (an app password made for this download) the
    device asks for nothing; the profile then holds a secret and must be served only to its
    owner over HTTPS, uncached. ValueError for a bad address or no usable service.

    The profile is unsigned, so iOS shows it as "Not Verified". Signing needs a certificate
    Apple devices trust; the ACME certificate would do, but that is left for later."""
    address = _mailbox(email)
    hostname = config.server.hostname
    incoming = _preferred(config, "imap") or _preferred(config, "pop3")
    outgoing = _preferred(config, "smtp")
    if incoming is None or outgoing is None:
        raise ValueError("no incoming or no outgoing mail service is on")
    profile_uuid, mail_uuid = profile_uuids(hostname, address)
    # One identifier per account, not per host: two addresses on one iPad are two profiles,
    # while the same address downloaded again replaces its own.
    identifier = f"{_reverse_dns(hostname)}.mailaccount.{profile_uuid.lower()}"
    mail = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.mail",
        "PayloadUUID": mail_uuid,
        "PayloadDisplayName": f"Mail ({address})",
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerHostName": hostname,
        "IncomingMailServerPortNumber": incoming.port,
        # UseSSL on a STARTTLS port (143, 587) makes iOS and macOS upgrade with STARTTLS and
        # refuse to go on in clear, which is what we want on every port.
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerUsername": address,
        "OutgoingMailServerHostName": hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    if display_name:
        mail["EmailAccountName"] = display_name  # the name on sent mail's From
    if password is not None:
        mail["IncomingPassword"] = password
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": profile_uuid,
        "PayloadDisplayName": f"{address} mail account",
        "PayloadDescription": f"Sets up {address} on {hostname} for Mail.",
        "PayloadOrganization": hostname,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [mail],
    }
    # plistlib escapes XML specials and refuses control characters (ValueError).
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)
