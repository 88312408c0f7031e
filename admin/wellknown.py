"""Documents for machines, served without a login: the MTA-STS policy, ACME http-01 tokens,
and mail-client set-up (Thunderbird autoconfig, Outlook autodiscover)."""

from __future__ import annotations

from flask import Blueprint, Response, abort, request

from admin.common import accounts, config, services
from server.web.mtasts import policy_text
from server.web.routes import _TOKEN, is_mta_sts_host, is_ours

bp = Blueprint("wellknown", __name__)

AUTODISCOVER_MAX = 64 * 1024
NO_STORE = {"Cache-Control": "no-store"}


def _host() -> str:
    return (request.host or "").rsplit(":", 1)[0].lower().rstrip(".")


@bp.get("/.well-known/mta-sts.txt")
def mta_sts():
    # RFC 8461 §3.3: only at https://mta-sts.<policy domain>/.well-known/mta-sts.txt.
    if not is_mta_sts_host(_host(), accounts().list_domains()):
        abort(404)
    web = config().web
    body = policy_text(config().server.hostname, web.mta_sts_mode, web.mta_sts_max_age)
    return Response(body, mimetype="text/plain", headers=NO_STORE)


@bp.get("/.well-known/acme-challenge/<token>")
def acme_challenge(token: str):
    responder = services().responder
    key_auth = responder.http01(token) if responder and _TOKEN.fullmatch(token) else None
    if key_auth is None:
        abort(404)
    return Response(key_auth, mimetype="text/plain", headers=NO_STORE)


def _domain_for(email: str | None) -> str | None:
    domains = accounts().list_domains()
    if email and "@" in email:
        domain = email.rpartition("@")[2].lower()
        if domain in domains:
            return domain
    host = _host()
    for prefix in ("autoconfig.", "autodiscover."):
        if host.startswith(prefix) and host[len(prefix):] in domains:
            return host[len(prefix):]
    return domains[0] if domains else None


@bp.get("/mail/config-v1.1.xml")
@bp.get("/.well-known/autoconfig/mail/config-v1.1.xml")
def autoconfig():
    from server.clientconfig import autoconfig_xml

    if not is_ours(_host(), config().server.hostname, accounts().list_domains()):
        abort(404)
    email = request.args.get("emailaddress")
    domain = _domain_for(email)
    if domain is None:
        abort(404)
    try:
        body = autoconfig_xml(config(), domain, email)
    except ValueError:  # no incoming or no outgoing service is on: nothing to describe
        abort(404)
    return Response(body, mimetype="application/xml")


@bp.route("/autodiscover/autodiscover.xml", methods=["POST"])
@bp.route("/Autodiscover/Autodiscover.xml", methods=["POST"])
def autodiscover():
    """Outlook's POX autodiscover: always 200, errors inside the XML, as Exchange answers."""
    from server.clientconfig import autodiscover_reply

    if (request.content_length or 0) > AUTODISCOVER_MAX:
        abort(413)
    body = request.get_data(cache=False)[:AUTODISCOVER_MAX + 1]
    return Response(autodiscover_reply(config(), body, accounts().list_domains()),
                    mimetype="application/xml")
