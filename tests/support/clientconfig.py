"""Checks for client auto-configuration documents, shared by the unit and protocol tests.

Ported from the offline validator the project was given (validate_client_configs.py): the
Thunderbird autoconfig XSD in tests/data/autoconfig (Mozilla publishes none; it encodes the
documented format) plus the required-once rules an order-free XSD cannot express, and the key
names, types and allowed values of Apple's published payload schemas
(github.com/apple/device-management, mdm/profiles). Each returns a list of problems; empty
means valid.
"""

from __future__ import annotations

import plistlib
import re
from pathlib import Path

from lxml import etree

XSD = Path(__file__).resolve().parent.parent / "data" / "autoconfig" / "config-v1.1.xsd"
_schema: etree.XMLSchema | None = None


def autoconfig_problems(data: bytes) -> list[str]:
    global _schema
    if _schema is None:
        _schema = etree.XMLSchema(etree.parse(str(XSD)))
    problems: list[str] = []
    try:
        root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as err:
        return [f"not well-formed XML: {err}"]
    if not _schema.validate(root.getroottree()):
        problems += [f"XSD line {e.line}: {e.message}" for e in _schema.error_log]
    if root.tag != "clientConfig":
        return problems + ["root element must be clientConfig"]
    if root.get("version") != "1.1":
        problems.append('clientConfig must carry version="1.1"')
    providers = root.findall("emailProvider")
    if len(providers) != 1:
        problems.append(f"expected exactly one emailProvider, found {len(providers)}")
    for provider in providers:
        if not provider.findall("domain"):
            problems.append("emailProvider needs at least one <domain>")
        for tag in ("displayName", "displayShortName"):
            if len(provider.findall(tag)) > 1:
                problems.append(f"more than one <{tag}>")
        incoming, outgoing = provider.findall("incomingServer"), provider.findall("outgoingServer")
        if not incoming:
            problems.append("no incomingServer")
        if not outgoing:
            problems.append("no outgoingServer")
        for server in incoming + outgoing:
            where = f"{server.tag}[type={server.get('type')}] line {server.sourceline}"
            # The recipe only warns about a missing username; we always send one, so a
            # missing one is a regression here.
            for tag in ("hostname", "port", "socketType", "username"):
                count = len(server.findall(tag))
                if count != 1:
                    problems.append(f"{where}: expected one <{tag}>, found {count}")
            if not server.findall("authentication"):
                problems.append(f"{where}: needs at least one <authentication>")
            socket_type, port = server.findtext("socketType"), server.findtext("port")
            if socket_type == "plain":
                problems.append(f"{where}: socketType plain (credentials in clear)")
            if socket_type == "SSL" and port in ("143", "110", "587", "25"):
                problems.append(f"{where}: implicit TLS on STARTTLS port {port}")
            if socket_type == "STARTTLS" and port in ("993", "995", "465"):
                problems.append(f"{where}: STARTTLS on implicit-TLS port {port}")
            username = server.findtext("username") or ""
            if "%" in username and username not in ("%EMAILADDRESS%", "%EMAILLOCALPART%"):
                problems.append(f"{where}: unusual username placeholder {username!r}")
    return problems


UUID_RE = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
AUTH = ["EmailAuthNone", "EmailAuthPassword", "EmailAuthCRAMMD5", "EmailAuthNTLM",
        "EmailAuthHTTPMD5"]
COMMON = {"PayloadIdentifier": (str, True), "PayloadUUID": (str, True),
          "PayloadType": (str, True), "PayloadVersion": (int, True),
          "PayloadDescription": (str, False), "PayloadDisplayName": (str, False),
          "PayloadOrganization": (str, False)}
TOPLEVEL = dict(COMMON, PayloadContent=(list, True), PayloadRemovalDisallowed=(bool, False),
                PayloadScope=(str, False), ConsentText=(dict, False),
                HasRemovalPasscode=(bool, False))
MAIL = {
    "EmailAccountDescription": (str, False), "EmailAccountName": (str, False),
    "EmailAccountType": (str, True, ["EmailTypeIMAP", "EmailTypePOP"]),
    "EmailAddress": (str, False),
    "IncomingMailServerAuthentication": (str, True, AUTH),
    "IncomingMailServerHostName": (str, True), "IncomingMailServerPortNumber": (int, False),
    "IncomingMailServerUseSSL": (bool, False), "IncomingMailServerUsername": (str, False),
    "IncomingMailServerIMAPPathPrefix": (str, False), "IncomingPassword": (str, False),
    "OutgoingPassword": (str, False), "OutgoingPasswordSameAsIncomingPassword": (bool, False),
    "OutgoingMailServerAuthentication": (str, True, AUTH),
    "OutgoingMailServerHostName": (str, True), "OutgoingMailServerPortNumber": (int, False),
    "OutgoingMailServerUseSSL": (bool, False), "OutgoingMailServerUsername": (str, False),
}


def _check_keys(d: dict, spec: dict, where: str) -> list[str]:
    problems = []
    for key, (typ, required, *allowed) in spec.items():
        if key not in d:
            if required:
                problems.append(f"{where}: missing required key {key}")
            continue
        value = d[key]
        # plistlib gives bool for <true/>, and bool is an int to Python: not to Apple.
        if (typ is int and isinstance(value, bool)) or not isinstance(value, typ):
            problems.append(f"{where}: {key} must be <{typ.__name__}>, got {value!r}")
        elif allowed and value not in allowed[0]:
            problems.append(f"{where}: {key}={value!r} not one of {allowed[0]}")
    problems += [f"{where}: unknown key {key}" for key in d if key not in spec]
    return problems


def mobileconfig_problems(data: bytes) -> list[str]:
    try:
        profile = plistlib.loads(data)
    except Exception as err:  # plistlib raises several types for a bad plist
        return [f"not a valid plist: {err}"]
    if not isinstance(profile, dict):
        return ["top level must be a dict"]
    problems = _check_keys(profile, TOPLEVEL, "TopLevel")
    if profile.get("PayloadType") != "Configuration":
        problems.append("TopLevel PayloadType must be 'Configuration'")
    if profile.get("PayloadVersion") != 1:
        problems.append("TopLevel PayloadVersion must be 1")
    ids, uuids = [profile.get("PayloadIdentifier")], [profile.get("PayloadUUID")]
    for i, payload in enumerate(profile.get("PayloadContent") or []):
        where = f"PayloadContent[{i}]"
        if not isinstance(payload, dict) or payload.get("PayloadType") != "com.apple.mail.managed":
            problems.append(f"{where}: not a com.apple.mail.managed payload")
            continue
        problems += _check_keys(payload, dict(COMMON, **MAIL), where)
        if payload.get("PayloadVersion") != 1:
            problems.append(f"{where}: PayloadVersion must be 1")
        ids.append(payload.get("PayloadIdentifier"))
        uuids.append(payload.get("PayloadUUID"))
        for side in ("Incoming", "Outgoing"):
            port = payload.get(f"{side}MailServerPortNumber")
            if not payload.get(f"{side}MailServerUseSSL", False):
                problems.append(f"{where}: {side}MailServerUseSSL is false")
            if isinstance(port, int) and not 0 < port < 65536:
                problems.append(f"{where}: {side}MailServerPortNumber {port} out of range")
    for u in uuids:
        if not isinstance(u, str) or not UUID_RE.fullmatch(u):
            problems.append(f"PayloadUUID {u!r} is not a UUID")
    if len(set(uuids)) != len(uuids):
        problems.append("PayloadUUIDs are not unique")
    if len(set(ids)) != len(ids):
        problems.append("PayloadIdentifiers are not unique")
    return problems
