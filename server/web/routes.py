"""What the web listeners answer, as a pure function of the request: ``route(request, site,
tls=...) -> Response``. ``site`` is the listener context (``server/web/http.py``); anything with
the same few attributes will do, which is how the unit tests drive it."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Protocol
from urllib.parse import parse_qs

from server.addresses import AddressError, parse_address
from server.clientconfig import AUTOCONFIG_PATHS, AUTOCONFIG_TYPE, autoconfig_xml
from server.web.message import Request, Response, text_response
from server.web.mtasts import policy_text

ACME_PREFIX = "/.well-known/acme-challenge/"
MTA_STS_PATH = "/.well-known/mta-sts.txt"
MTA_STS_LABEL = "mta-sts."
AUTOCONFIG_LABEL = "autoconfig."
METHODS = ("GET", "HEAD")
ALLOW = ", ".join(METHODS)
# RFC 8555 §8.3: the token is base64url without padding (128 bits or more of entropy); anything
# else, dots and slashes above all, never reaches the responder.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
NO_STORE = ("Cache-Control", "no-store")


class Site(Protocol):
    hostname: str
    https_port: int
    responder: object | None
    mta_sts_mode: str
    mta_sts_max_age: int
    config: object  # server.config.Config: the listeners autoconfig describes

    def domains(self) -> list[str]: ...


def route(req: Request, site: Site, *, tls: bool) -> Response:
    if req.method not in METHODS:
        return text_response(HTTPStatus.METHOD_NOT_ALLOWED, "Method Not Allowed",
                             [("Allow", ALLOW)])
    if req.has_body:
        # A GET or HEAD body has no meaning here (RFC 9110 §9.3.1); we never read one.
        return text_response(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request bodies not accepted")
    if req.path.startswith(ACME_PREFIX):
        # Answered on both listeners: the CA fetches over plain HTTP (port 80) and would follow
        # a redirect to HTTPS, but answering directly needs no working certificate.
        return acme_challenge(site, req.path[len(ACME_PREFIX):])
    if req.path in AUTOCONFIG_PATHS and is_ours(req.host, site.hostname, site.domains()):
        # Both listeners: Thunderbird asks http://autoconfig.<domain>/ too, and a redirect to
        # HTTPS would fail there until the certificate covers that name.
        return autoconfig(req, site)
    if not tls:
        return redirect(req, site)
    if req.path == MTA_STS_PATH and is_mta_sts_host(req.host, site.domains()):
        # RFC 8461 §3.3: the policy is fetched over HTTPS only, so only this listener has it.
        body = policy_text(site.hostname, site.mta_sts_mode, site.mta_sts_max_age).encode()
        return Response(HTTPStatus.OK, body, "text/plain", [NO_STORE])
    # The admin panel will be mounted here; until then there is nothing else to show.
    return text_response(HTTPStatus.NOT_FOUND, "Not Found")


def acme_challenge(site: Site, token: str) -> Response:
    """RFC 8555 §8.3: the key authorization for ``token``, while an order is pending."""
    responder = site.responder
    key_auth = responder.http01(token) if responder and _TOKEN.fullmatch(token) else None
    if key_auth is None:
        return text_response(HTTPStatus.NOT_FOUND, "Not Found", [NO_STORE])
    return Response(HTTPStatus.OK, key_auth.encode("ascii"), "text/plain", [NO_STORE])


def autoconfig_domain(req: Request, site: Site) -> str | None:
    """Which of our domains the request is about: the ``emailaddress`` Thunderbird sends,
    else the ``autoconfig.<domain>`` it asked, else our first domain."""
    domains = site.domains()
    # The head is at most 8 KiB, which bounds the query too.
    addresses = parse_qs(req.query).get("emailaddress")
    if addresses:
        try:
            domain = parse_address(addresses[0].strip()).domain
        except AddressError:
            domain = None
        if domain in domains:
            return domain
    host = req.host or ""
    if host.startswith(AUTOCONFIG_LABEL) and host[len(AUTOCONFIG_LABEL):] in domains:
        return host[len(AUTOCONFIG_LABEL):]
    return domains[0] if domains else None


def autoconfig(req: Request, site: Site) -> Response:
    """Thunderbird's config-v1.1.xml for the domain the request is about."""
    domain = autoconfig_domain(req, site)
    try:
        body = autoconfig_xml(site.config, domain) if domain else None
    except ValueError:  # no incoming or no outgoing service is on
        body = None
    if body is None:
        return text_response(HTTPStatus.NOT_FOUND, "Not Found")
    return Response(HTTPStatus.OK, body, AUTOCONFIG_TYPE)


def is_ours(host: str | None, hostname: str, domains: list[str]) -> bool:
    """The hostname, one of our domains, or a name under one of them."""
    if not host:
        return False
    return host == hostname or any(host == d or host.endswith("." + d) for d in domains)


def is_mta_sts_host(host: str | None, domains: list[str]) -> bool:
    """RFC 8461 §3.3: the policy host is ``mta-sts.<Policy Domain>``, exactly."""
    return bool(host) and host.startswith(MTA_STS_LABEL) and \
        host[len(MTA_STS_LABEL):] in domains


def redirect_location(req: Request, site: Site) -> str:
    # Never reflect a foreign Host: a redirect to an attacker's name, cached by a browser or a
    # proxy as permanent, would send our users there.
    host = req.host if is_ours(req.host, site.hostname, site.domains()) else site.hostname
    port = "" if site.https_port == 443 else f":{site.https_port}"
    query = f"?{req.query}" if req.query else ""
    return f"https://{host}{port}{req.path}{query}"


def redirect(req: Request, site: Site) -> Response:
    location = redirect_location(req, site)
    return text_response(HTTPStatus.MOVED_PERMANENTLY, f"Moved to {location}",
                         [("Location", location)])
