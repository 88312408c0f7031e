"""Thunderbird autoconfig through the web router (server/web/routes.py), without sockets:
which requests get the document, on which listener, and for which domain."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from http import HTTPStatus
from types import SimpleNamespace

import pytest

from server.config import parse_config, render_config
from server.web.message import parse_request, serialize
from server.web.routes import route
from tests.support.clientconfig import autoconfig_problems

HOSTNAME = "mail.example.test"
PATHS = ["/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"]
LISTEN = {"imaps": "127.0.0.1:2993", "submissions": "127.0.0.1:2465"}


def site(tmp_path, listen=None, domains=("example.test", "other.test")):
    config = parse_config(render_config(HOSTNAME, tmp_path, LISTEN if listen is None else listen),
                          tmp_path / "mailstead.toml")
    return SimpleNamespace(hostname=HOSTNAME, https_port=443, mta_sts_mode="testing",
                           mta_sts_max_age=604800, responder=None, config=config,
                           domains=lambda: list(domains))


def get(target: str, host: str | None, method="GET"):
    version = "1.1" if host else "1.0"  # HTTP/1.1 without Host is a 400 before routing
    head = f"{method} {target} HTTP/{version}\r\n" + (f"Host: {host}\r\n" if host else "") + "\r\n"
    return parse_request(head.encode())


def provider_id(body: bytes) -> str:
    return ET.fromstring(body).find("emailProvider").get("id")


@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("path", PATHS)
def test_served_on_both_listeners(tmp_path, path, tls):
    resp = route(get(path, "autoconfig.example.test"), site(tmp_path), tls=tls)
    assert resp.status == HTTPStatus.OK
    assert resp.content_type == "application/xml"
    assert autoconfig_problems(resp.body) == []
    assert provider_id(resp.body) == "example.test"
    ports = [int(p.text) for p in ET.fromstring(resp.body).iter("port")]
    assert ports == [2993, 2465]  # the configured listeners, not the standard ports


@pytest.mark.parametrize("query, host, domain", [
    ("?emailaddress=alice%40other.test", "autoconfig.example.test", "other.test"),
    ("?emailaddress=Alice@OTHER.test", HOSTNAME, "other.test"),
    # An address of a domain we do not serve says nothing; the host name decides.
    ("?emailaddress=eve%40evil.test", "autoconfig.other.test", "other.test"),
    ("?emailaddress=not-an-address", "autoconfig.other.test", "other.test"),
    ("?emailaddress=", "autoconfig.other.test", "other.test"),
    ("", "autoconfig.other.test", "other.test"),
    # Neither: our first domain.
    ("", HOSTNAME, "example.test"),
    ("", "other.test", "example.test"),
    ("?emailaddress=eve%40evil.test", "autoconfig.sub.other.test", "example.test"),
])
def test_domain_chosen(tmp_path, query, host, domain):
    resp = route(get(PATHS[0] + query, host), site(tmp_path), tls=False)
    assert resp.status == HTTPStatus.OK
    assert provider_id(resp.body) == domain


def test_foreign_hosts_are_not_answered(tmp_path):
    # Not ours: plain HTTP goes on to its redirect (to our own name), HTTPS to 404.
    for host in ("autoconfig.evil.test", None, "127.0.0.1"):
        resp = route(get(PATHS[0], host), site(tmp_path), tls=False)
        assert resp.status == HTTPStatus.MOVED_PERMANENTLY
        assert dict(resp.headers)["Location"].startswith(f"https://{HOSTNAME}/")
        assert route(get(PATHS[0], host), site(tmp_path), tls=True).status == \
            HTTPStatus.NOT_FOUND


def test_head_and_other_methods(tmp_path):
    resp = route(get(PATHS[0], "autoconfig.example.test", "HEAD"), site(tmp_path), tls=False)
    assert resp.status == HTTPStatus.OK
    data = serialize(resp, head_only=True)
    assert data.endswith(b"\r\n\r\n") and f"Content-Length: {len(resp.body)}".encode() in data
    post = get(PATHS[0], "autoconfig.example.test", "POST")
    assert route(post, site(tmp_path), tls=False).status == HTTPStatus.METHOD_NOT_ALLOWED


def test_nothing_to_describe_is_404(tmp_path):
    no_domains = site(tmp_path, domains=())
    assert route(get(PATHS[0], HOSTNAME), no_domains, tls=True).status == HTTPStatus.NOT_FOUND
    no_outgoing = site(tmp_path, listen={"imaps": "*:993"})
    assert route(get(PATHS[0], HOSTNAME), no_outgoing, tls=True).status == HTTPStatus.NOT_FOUND


def test_other_paths_unchanged(tmp_path):
    for path in ("/mail/config-v1.1.xml/", "/mail/config-v1.1.xmlx", "/.well-known/autoconfig/"):
        assert route(get(path, "autoconfig.example.test"), site(tmp_path), tls=False).status == \
            HTTPStatus.MOVED_PERMANENTLY
        assert route(get(path, "autoconfig.example.test"), site(tmp_path), tls=True).status == \
            HTTPStatus.NOT_FOUND
