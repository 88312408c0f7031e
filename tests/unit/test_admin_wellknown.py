"""The documents the panel serves to machines without a login: Thunderbird autoconfig, Outlook
autodiscover, the MTA-STS policy and ACME http-01 answers."""

from __future__ import annotations

import pytest
from lxml import etree

from server.acme.responder import ChallengeResponder
from server.clientconfig import OUTLOOK_SCHEMA
from tests.support.clientconfig import autoconfig_problems
from tests.support.panel import Panel, instance, text

NS = {"r": OUTLOOK_SCHEMA}


@pytest.fixture
def responder():
    return ChallengeResponder()


@pytest.fixture
def panel(tmp_path, dns_server, responder):
    return Panel.create(tmp_path, dns_server, responder=responder)


def get(panel, path, host, **kwargs):
    return panel.client.get(path, base_url=f"https://{host}", **kwargs)


def outlook_request(email="user@example.test", schema=OUTLOOK_SCHEMA) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/'
        'requestschema/2006">\n<Request>\n'
        f"  <EMailAddress>{email}</EMailAddress>\n"
        f"  <AcceptableResponseSchema>{schema}</AcceptableResponseSchema>\n"
        "</Request>\n</Autodiscover>\n").encode()


# --- Thunderbird autoconfig ---


@pytest.mark.parametrize("path", ["/mail/config-v1.1.xml",
                                  "/.well-known/autoconfig/mail/config-v1.1.xml"])
def test_autoconfig(panel, path):
    r = get(panel, path + "?emailaddress=user%40example.test", "autoconfig.example.test")
    assert r.status_code == 200
    assert r.mimetype == "application/xml"
    assert autoconfig_problems(r.data) == []
    doc = etree.fromstring(r.data)
    assert doc.findtext("emailProvider/domain") == "example.test"
    assert doc.findtext("emailProvider/incomingServer/hostname") == "mail.example.test"
    assert "Set-Cookie" not in r.headers  # a machine's request starts no session


def test_autoconfig_domain_from_the_host(panel):
    panel.accounts.add_domain("other.test")
    r = get(panel, "/mail/config-v1.1.xml", "autoconfig.other.test")
    assert etree.fromstring(r.data).findtext("emailProvider/domain") == "other.test"
    # An address of ours wins over the host; a foreign one does not.
    r = get(panel, "/mail/config-v1.1.xml?emailaddress=x%40other.test", "autoconfig.example.test")
    assert etree.fromstring(r.data).findtext("emailProvider/domain") == "other.test"
    r = get(panel, "/mail/config-v1.1.xml?emailaddress=x%40evil.test", "autoconfig.other.test")
    assert etree.fromstring(r.data).findtext("emailProvider/domain") == "other.test"


def test_autoconfig_never_echoes_the_query(panel):
    r = get(panel, "/mail/config-v1.1.xml?emailaddress=%3Cx%3E%40example.test",
            "autoconfig.example.test")
    assert r.status_code == 200 and b"<x>" not in r.data and autoconfig_problems(r.data) == []


def test_autoconfig_only_for_our_names(panel):
    for host in ("evil.test", "autoconfig.evil.test", "localhost"):
        assert get(panel, "/mail/config-v1.1.xml", host).status_code == 404, host


def test_autoconfig_without_mail_services_is_404(tmp_path, dns_server):
    inst = instance(tmp_path, dns_server.nameserver)
    config = inst.config_path.read_text()
    for service in ("imap", "imaps", "pop3", "pop3s"):
        port = inst.ports[service]
        config = config.replace(f'{service} = "127.0.0.1:{port}"', f'{service} = ""')
    inst.config_path.write_text(config)
    panel = Panel(inst)
    r = get(panel, "/mail/config-v1.1.xml", "autoconfig.example.test")
    assert r.status_code == 404


# --- Outlook autodiscover ---


@pytest.mark.parametrize("path", ["/autodiscover/autodiscover.xml",
                                  "/Autodiscover/Autodiscover.xml"])
def test_autodiscover(panel, path):
    # No CSRF token and no Referer: Outlook sends neither.
    r = panel.client.post(path, base_url="https://autodiscover.example.test",
                          data=outlook_request(), content_type="text/xml")
    assert r.status_code == 200 and r.mimetype == "application/xml"
    doc = etree.fromstring(r.data)
    protocols = {p.findtext("r:Type", namespaces=NS): p
                 for p in doc.iterfind(".//r:Protocol", NS)}
    assert "IMAP" in protocols and "SMTP" in protocols
    imap = protocols["IMAP"]
    assert imap.findtext("r:Server", namespaces=NS) == "mail.example.test"
    assert imap.findtext("r:Port", namespaces=NS) == str(panel.inst.ports["imaps"])
    assert imap.findtext("r:LoginName", namespaces=NS) == "user@example.test"
    assert "Set-Cookie" not in r.headers


def test_autodiscover_errors_are_inside_the_document(panel):
    for body in (outlook_request("someone@evil.test"), b"<not xml", b""):
        r = panel.client.post("/autodiscover/autodiscover.xml", base_url="https://localhost",
                              data=body, content_type="text/xml")
        assert r.status_code == 200
        assert etree.fromstring(r.data).find(".//{*}Error/{*}ErrorCode") is not None
        assert b"<Protocol>" not in r.data


def test_autodiscover_body_limit(panel):
    r = panel.client.post("/autodiscover/autodiscover.xml", base_url="https://localhost",
                          data=b" " * (64 * 1024 + 1), content_type="text/xml")
    assert r.status_code == 413


# --- MTA-STS ---


def test_mta_sts_policy_only_on_the_policy_host(panel):
    r = get(panel, "/.well-known/mta-sts.txt", "mta-sts.example.test")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    policy = text(r)
    assert policy.startswith("version: STSv1")
    assert "mx: mail.example.test" in policy
    assert r.headers["Cache-Control"] == "no-store"
    for host in ("example.test", "mail.example.test", "mta-sts.evil.test", "localhost",
                 "mta-sts.mta-sts.example.test"):
        assert get(panel, "/.well-known/mta-sts.txt", host).status_code == 404, host


# --- ACME http-01 ---


def test_acme_challenge(panel, responder):
    assert get(panel, "/.well-known/acme-challenge/abc_DEF-123", "localhost").status_code == 404
    responder.add_http01("abc_DEF-123", "abc_DEF-123.thumbprint")
    r = get(panel, "/.well-known/acme-challenge/abc_DEF-123", "mail.example.test")
    assert r.status_code == 200 and r.data == b"abc_DEF-123.thumbprint"
    assert r.mimetype == "text/plain" and r.headers["Cache-Control"] == "no-store"
    responder.remove_http01("abc_DEF-123")
    assert get(panel, "/.well-known/acme-challenge/abc_DEF-123", "localhost").status_code == 404


def test_acme_challenge_tokens_are_checked(panel, responder):
    responder.add_http01("a.b", "should never be served")
    assert get(panel, "/.well-known/acme-challenge/a.b", "localhost").status_code == 404


def test_acme_challenge_without_responder(tmp_path, dns_server):
    panel = Panel.create(tmp_path, dns_server, users=False)
    assert get(panel, "/.well-known/acme-challenge/abc", "localhost").status_code == 404
