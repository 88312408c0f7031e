"""Client auto-configuration documents (server/clientconfig.py): Thunderbird autoconfig checked
against the XSD and the required-once rules, Outlook autodiscover requests (hostile ones too)
and responses parsed back, Apple profiles checked against Apple's key names and types."""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET

import pytest

from server.clientconfig import (
    MAX_AUTODISCOVER_REQUEST,
    MOBILESYNC_SCHEMA,
    OUTLOOK_SCHEMA,
    RESPONSE_NS,
    autoconfig_xml,
    autodiscover_reply,
    autodiscover_xml,
    mobileconfig,
    parse_autodiscover_request,
    profile_uuids,
    read_autodiscover_request,
)
from server.config import parse_config, render_config
from tests.support.clientconfig import autoconfig_problems, mobileconfig_problems

HOSTNAME = "mail.example.test"
STANDARD = {"imap": "*:143", "imaps": "*:993", "pop3": "*:110", "pop3s": "*:995",
            "submission": "*:587", "submissions": "*:465", "mx": "*:25"}


def make_config(tmp_path, listen=None, hostname=HOSTNAME):
    text = render_config(hostname, tmp_path, STANDARD if listen is None else listen)
    return parse_config(text, tmp_path / "mailstead.toml")


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)


def servers(doc: bytes) -> list[tuple[str, str, int, str]]:
    provider = ET.fromstring(doc).find("emailProvider")
    return [(s.tag, s.get("type"), int(s.findtext("port")), s.findtext("socketType"))
            for s in provider if s.tag in ("incomingServer", "outgoingServer")]


# --- Thunderbird autoconfig ---


def test_autoconfig_is_valid_and_prefers_implicit_tls(config):
    doc = autoconfig_xml(config, "example.test", "alice@example.test")
    assert doc.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<clientConfig version="1.1">')
    assert autoconfig_problems(doc) == []
    assert servers(doc) == [
        ("incomingServer", "imap", 993, "SSL"), ("incomingServer", "imap", 143, "STARTTLS"),
        ("incomingServer", "pop3", 995, "SSL"), ("incomingServer", "pop3", 110, "STARTTLS"),
        ("outgoingServer", "smtp", 465, "SSL"), ("outgoingServer", "smtp", 587, "STARTTLS"),
    ]
    provider = ET.fromstring(doc).find("emailProvider")
    assert provider.get("id") == provider.findtext("domain") == "example.test"
    for server in provider.findall("incomingServer") + provider.findall("outgoingServer"):
        assert server.findtext("hostname") == HOSTNAME
        assert server.findtext("username") == "%EMAILADDRESS%"
        assert server.findtext("authentication") == "password-cleartext"


def test_autoconfig_ports_follow_the_config_and_off_services_are_left_out(tmp_path):
    config = make_config(tmp_path, {"imaps": "127.0.0.1:2993", "submission": "127.0.0.1:2587"})
    doc = autoconfig_xml(config, "example.test")
    assert autoconfig_problems(doc) == []
    assert servers(doc) == [("incomingServer", "imap", 2993, "SSL"),
                            ("outgoingServer", "smtp", 2587, "STARTTLS")]
    pop_only = make_config(tmp_path, {"pop3s": "*:995", "submissions": "*:465"})
    assert servers(autoconfig_xml(pop_only, "example.test"))[0][:3] == \
        ("incomingServer", "pop3", 995)


@pytest.mark.parametrize("listen", [{"imaps": "*:993"}, {"submissions": "*:465"}, {}])
def test_autoconfig_needs_a_way_in_and_out(tmp_path, listen):
    with pytest.raises(ValueError):
        autoconfig_xml(make_config(tmp_path, listen), "example.test")


def test_autoconfig_domains(config):
    # An IDN is written as its A-label: what our domain table holds and the format allows.
    doc = autoconfig_xml(config, "Bücher.Example.")
    assert autoconfig_problems(doc) == []
    assert ET.fromstring(doc).find("emailProvider").get("id") == "xn--bcher-kva.example"
    for bad in ("a<b>.test", "evil.test\"><x", "", "a..test"):
        with pytest.raises(ValueError):
            autoconfig_xml(config, bad)
    # The address is not reflected, whatever it is: one document per domain.
    assert autoconfig_xml(config, "example.test", "<x>@evil.test") == \
        autoconfig_xml(config, "example.test")


def test_the_checker_catches_a_broken_document(config):
    # The checks themselves must bite, or a passing test above means nothing.
    doc = autoconfig_xml(config, "example.test")
    assert autoconfig_problems(doc.replace(b"<port>993</port>", b"<port>993</port><port>1</port>"))
    assert autoconfig_problems(doc.replace(b'type="smtp"', b'type="smtps"'))
    assert autoconfig_problems(doc.replace(b">SSL<", b">TLS<", 1))
    assert autoconfig_problems(doc.replace(b"<displayName>", b"<displayName>a</displayName>"
                                           b"<displayName>", 1))


# --- Outlook autodiscover: requests ---


def request(email="alice@example.test", schema=OUTLOOK_SCHEMA, kind="outlook") -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/{kind}/'
        'requestschema/2006">\n<Request>\n'
        f"  <EMailAddress>{email}</EMailAddress>\n"
        f"  <AcceptableResponseSchema>{schema}</AcceptableResponseSchema>\n"
        "</Request>\n</Autodiscover>\n").encode()


def test_parse_autodiscover_request():
    assert parse_autodiscover_request(request()) == "alice@example.test"
    assert parse_autodiscover_request(request(" Alice@EXAMPLE.test\n")) == "Alice@example.test"
    assert parse_autodiscover_request(request("a&amp;b@example.test")) == "a&b@example.test"
    parsed = read_autodiscover_request(request(schema=MOBILESYNC_SCHEMA, kind="mobilesync"))
    assert (parsed.email, parsed.response_schema) == ("alice@example.test", MOBILESYNC_SCHEMA)
    # Without AcceptableResponseSchema the request's own namespace says which provider.
    bare = request().replace(f"<AcceptableResponseSchema>{OUTLOOK_SCHEMA}"
                             "</AcceptableResponseSchema>".encode(), b"")
    assert read_autodiscover_request(bare).response_schema == OUTLOOK_SCHEMA
    # UTF-16 with a BOM is XML too.
    assert parse_autodiscover_request(
        request().decode().replace("utf-8", "utf-16").encode("utf-16")) == "alice@example.test"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE Autodiscover [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
]>
<Autodiscover><Request><EMailAddress>&d;@example.test</EMailAddress></Request></Autodiscover>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Autodiscover [<!ENTITY x SYSTEM "file:///etc/hostname">]>
<Autodiscover><Request><EMailAddress>&x;@example.test</EMailAddress></Request></Autodiscover>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE Autodiscover SYSTEM "http://127.0.0.1:9/evil.dtd">
<Autodiscover><Request><EMailAddress>a@example.test</EMailAddress></Request></Autodiscover>"""


@pytest.mark.parametrize("body", [
    BILLION_LAUGHS, XXE, EXTERNAL_DTD,
    request().replace(b"\n<Autodiscover", b"\n<!DOCTYPE Autodiscover>\n<Autodiscover"),
    request("&undefined;@example.test"),  # no DTD, so no entity but the five predefined
    request(b"a@example.test</EMailAddress".decode()),  # not well-formed
    b"", b"\xff\xfe\x00garbage", b"<Autodiscover>",
    request().replace(b"Autodiscover", b"Autodetect"),
    request().replace(b"Request>", b"Query>"),
    request(""), request("no-at-sign"), request("a@[127.0.0.1]"), request("a@-bad-.test"),
    request("a\x01b@example.test"),
], ids=["billion-laughs", "xxe", "external-dtd", "doctype", "undefined-entity", "malformed",
        "empty", "binary", "unclosed", "wrong-root", "no-request", "no-address", "no-at",
        "literal", "bad-domain", "control-char"])
def test_autodiscover_requests_refused(body):
    assert parse_autodiscover_request(body) is None


def test_autodiscover_request_size_limit():
    pad = MAX_AUTODISCOVER_REQUEST - len(request())
    at_limit = request().replace(b"<Request>", b"<Request>" + b" " * pad)
    assert len(at_limit) == MAX_AUTODISCOVER_REQUEST
    assert parse_autodiscover_request(at_limit) == "alice@example.test"
    assert parse_autodiscover_request(at_limit.replace(b"<Request>", b"<Request> ")) is None


# --- Outlook autodiscover: responses ---


def protocols(doc: bytes) -> list[dict[str, str]]:
    root = ET.fromstring(doc)
    assert root.tag == f"{{{RESPONSE_NS}}}Autodiscover"
    account = root.find(f"{{{OUTLOOK_SCHEMA}}}Response/{{{OUTLOOK_SCHEMA}}}Account")
    ns = f"{{{OUTLOOK_SCHEMA}}}"
    assert account.findtext(f"{ns}AccountType") == "email"
    assert account.findtext(f"{ns}Action") == "settings"
    return [{child.tag[len(ns):]: child.text for child in p} for p in account.iter(f"{ns}Protocol")]


def test_autodiscover_response(config):
    found = protocols(autodiscover_xml(config, "alice@example.test"))
    assert [(p["Type"], p["Port"], p["SSL"], p["Encryption"]) for p in found] == [
        ("IMAP", "993", "on", "SSL"), ("SMTP", "465", "on", "SSL"), ("POP3", "995", "on", "SSL")]
    for p in found:
        assert (p["Server"], p["LoginName"], p["AuthRequired"], p["SPA"]) == \
            (HOSTNAME, "alice@example.test", "on", "off")


def test_autodiscover_response_starttls_only(tmp_path):
    config = make_config(tmp_path, {"imap": "*:143", "submission": "*:587"})
    found = protocols(autodiscover_xml(config, "alice@example.test"))
    assert [(p["Type"], p["Port"], p["Encryption"]) for p in found] == [
        ("IMAP", "143", "TLS"), ("SMTP", "587", "TLS")]


def test_autodiscover_response_escapes_the_address(config):
    odd = '"o\'d<d> & \\"q\\""@example.test'
    doc = autodiscover_xml(config, odd)
    assert b"<d>" not in doc and b"& " not in doc
    assert {p["LoginName"] for p in protocols(doc)} == {odd}
    with pytest.raises(ValueError):
        autodiscover_xml(config, "not an address")


def error_code(doc: bytes) -> int:
    return int(ET.fromstring(doc).findtext(f"{{{RESPONSE_NS}}}Response/{{{RESPONSE_NS}}}Error/"
                                           f"{{{RESPONSE_NS}}}ErrorCode"))


def test_autodiscover_reply(config):
    assert protocols(autodiscover_reply(config, request(), ["example.test"]))
    assert protocols(autodiscover_reply(config, request()))  # no domain list: no check
    assert error_code(autodiscover_reply(config, request("bob@elsewhere.test"),
                                         ["example.test"])) == 500
    assert error_code(autodiscover_reply(config, XXE)) == 600
    mobile = request(schema=MOBILESYNC_SCHEMA, kind="mobilesync")
    assert error_code(autodiscover_reply(config, mobile, ["example.test"])) == 601


# --- Apple configuration profile ---


def test_mobileconfig_valid(config):
    data = mobileconfig(config, "alice@example.test")
    assert mobileconfig_problems(data) == []
    profile = plistlib.loads(data)
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadIdentifier"].startswith("test.example.mail.")
    [mail] = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["EmailAccountType"] == "EmailTypeIMAP"
    assert mail["EmailAddress"] == mail["IncomingMailServerUsername"] == \
        mail["OutgoingMailServerUsername"] == "alice@example.test"
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"],
            mail["IncomingMailServerUseSSL"]) == (HOSTNAME, 993, True)
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"],
            mail["OutgoingMailServerUseSSL"]) == (HOSTNAME, 465, True)
    assert mail["IncomingMailServerAuthentication"] == "EmailAuthPassword"
    assert mail["OutgoingPasswordSameAsIncomingPassword"] is True
    assert "IncomingPassword" not in mail and "EmailAccountName" not in mail
    assert b"Password</key>\n\t\t\t<string>" not in data


def test_mobileconfig_password_and_name_only_when_given(config):
    data = mobileconfig(config, "alice@example.test", "Ann & <Bob> \"O'Neil\"", "s3cr&t<")
    assert mobileconfig_problems(data) == []
    [mail] = plistlib.loads(data)["PayloadContent"]
    assert mail["IncomingPassword"] == "s3cr&t<"
    assert mail["EmailAccountName"] == "Ann & <Bob> \"O'Neil\""
    with pytest.raises(ValueError):  # a control character cannot be written in an XML plist
        mobileconfig(config, "alice@example.test", "Ann\x01")


def test_mobileconfig_uuids_are_stable_per_host_and_address(tmp_path, config):
    def ids(cfg, email):
        profile = plistlib.loads(mobileconfig(cfg, email))
        return (profile["PayloadUUID"], profile["PayloadIdentifier"],
                profile["PayloadContent"][0]["PayloadUUID"])

    first = ids(config, "alice@example.test")
    assert ids(config, "alice@example.test") == first
    assert ids(config, "Alice@EXAMPLE.test") == first  # one mailbox, one profile
    assert first[0] == profile_uuids(HOSTNAME, "alice@example.test")[0]
    assert len({first[0], first[2]}) == 2
    others = [ids(config, "bob@example.test"),
              ids(make_config(tmp_path, hostname="mx.example.test"), "alice@example.test")]
    for other in others:
        assert not set(other) & set(first)


def test_mobileconfig_follows_the_config(tmp_path):
    config = make_config(tmp_path, {"pop3": "*:2110", "submission": "*:2587"})
    [mail] = plistlib.loads(mobileconfig(config, "alice@example.test"))["PayloadContent"]
    assert (mail["EmailAccountType"], mail["IncomingMailServerPortNumber"],
            mail["OutgoingMailServerPortNumber"]) == ("EmailTypePOP", 2110, 2587)
    with pytest.raises(ValueError):
        mobileconfig(make_config(tmp_path, {"imaps": "*:993"}), "alice@example.test")
    with pytest.raises(ValueError):
        mobileconfig(make_config(tmp_path), "alice")


def test_the_profile_checker_bites(config):
    profile = plistlib.loads(mobileconfig(config, "alice@example.test"))
    profile["PayloadContent"][0]["IncomingMailServerPortNumber"] = "993"
    profile["PayloadContent"][0]["AuthenticationMethod"] = "EmailAuthPassword"
    del profile["PayloadContent"][0]["OutgoingMailServerAuthentication"]
    problems = mobileconfig_problems(plistlib.dumps(profile))
    assert len(problems) == 3, problems
