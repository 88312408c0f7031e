"""Thunderbird autoconfig from a real running instance, fetched the way Thunderbird does:
plain HTTP, ``autoconfig.<domain>`` as the Host, the address in the query."""

from __future__ import annotations

import http.client
import xml.etree.ElementTree as ET

from tests.support.clientconfig import autoconfig_problems


def fetch(port: int, target: str, host: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", target, headers={"Host": host})
    resp = conn.getresponse()
    resp.body = resp.read()
    conn.close()
    return resp


def test_autoconfig_over_plain_http(mx):
    resp = fetch(mx.ports["http"], "/mail/config-v1.1.xml?emailaddress=alice%40example.test",
                 "autoconfig.example.test")
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/xml"
    assert autoconfig_problems(resp.body) == []
    provider = ET.fromstring(resp.body).find("emailProvider")
    assert provider.get("id") == "example.test"
    # The instance listens on free loopback ports; the document must say which.
    found = {(s.get("type"), int(s.findtext("port")), s.findtext("socketType"))
             for s in provider if s.tag in ("incomingServer", "outgoingServer")}
    assert found == {("imap", mx.ports["imaps"], "SSL"), ("imap", mx.ports["imap"], "STARTTLS"),
                     ("pop3", mx.ports["pop3s"], "SSL"), ("pop3", mx.ports["pop3"], "STARTTLS"),
                     ("smtp", mx.ports["submissions"], "SSL"),
                     ("smtp", mx.ports["submission"], "STARTTLS")}
    assert {h.text for h in provider.iter("hostname")} == {mx.hostname}


def test_foreign_host_still_redirected(mx):
    resp = fetch(mx.ports["http"], "/mail/config-v1.1.xml", "autoconfig.evil.test")
    assert resp.status == 301
    assert resp.getheader("Location").startswith(f"https://{mx.hostname}:")
