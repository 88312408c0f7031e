"""The JSON API: what the panel does, for scripts. Documented in docs/api.yml (OpenAPI 3.1).

Authentication is a bearer token (``Authorization: Bearer mst_...``, made on the panel's
account page), never the session cookie: a request a browser can be tricked into sending
carries no token, so the API needs no CSRF defence. Admin tokens reach everything; any user's
token reaches ``/api/v1/me``. Errors are ``{"error": "..."}`` with the status that fits.
"""

from __future__ import annotations

import asyncio
import functools

from flask import Blueprint, g, jsonify, request
from werkzeug.exceptions import HTTPException

from admin.common import accounts, config, services
from server.accounts import AccountError

bp = Blueprint("api", __name__, url_prefix="/api/v1")


class APIError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@bp.errorhandler(APIError)
def _api_error(err: APIError):
    return jsonify(error=str(err)), err.status


@bp.errorhandler(AccountError)
def _account_error(err: AccountError):
    return jsonify(error=str(err)), 400


@bp.errorhandler(HTTPException)
def _http_error(err: HTTPException):
    return jsonify(error=err.description or err.name), err.code


@bp.before_request
def authenticate():
    from admin.auth import _client_ip, _cooldown

    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    ip, cooldown = _client_ip(), _cooldown()
    wait = cooldown.wait(ip, "api-token")
    if wait > 0:
        resp = jsonify(error="too many failed attempts; wait and retry")
        return resp, 429, {"Retry-After": str(int(wait) + 1)}
    presented = scheme.lower() == "bearer" and bool(token.strip())
    user = accounts().authenticate_token(token.strip()) if presented else None
    if user is None:
        if presented:  # a wrong token is a guess; a missing one is a forgetful script
            cooldown.failure(ip, "api-token")
        return jsonify(error="a valid API token is required"), 401, \
            {"WWW-Authenticate": 'Bearer realm="mailstead"'}
    g.user = user
    return None


def admin_only(view):
    @functools.wraps(view)
    def run(*args, **kwargs):
        if not g.user.is_admin:
            raise APIError(403, "this token's user is not an admin")
        return view(*args, **kwargs)
    return run


def body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return data


def _str(data: dict, key: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise APIError(400, f"{key}: a non-empty string is required")
    if any(c in value for c in "\r\n\0"):
        raise APIError(400, f"{key}: must be one line")
    return value.strip()


def _bool(data: dict, key: str) -> bool | None:
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise APIError(400, f"{key}: true or false")
    return value


def _quota(data: dict) -> int | None:
    value = data.get("quota_bytes")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise APIError(400, "quota_bytes: an integer number of bytes (0 = unlimited)")
    return value


def mailbox_json(u) -> dict:
    from admin.mailboxes import usage_of

    return {"address": u.address, "quota_bytes": u.quota_bytes, "used_bytes": usage_of(u),
            "admin": u.is_admin, "disabled": u.disabled}


def _user_or_404(address: str):
    u = accounts().get_user(address)
    if u is None:
        raise APIError(404, f"no mailbox {address}")
    return u


# --- domains ---


@bp.get("/domains")
@admin_only
def list_domains():
    return jsonify(domains=accounts().list_domains())


@bp.post("/domains")
@admin_only
def add_domain():
    from server import dkimkeys

    name = accounts().add_domain(_str(body(), "name"))
    dkimkeys.generate(config().dkim_dir, name, ed25519=config().dkim.ed25519)
    return jsonify(name=name), 201


@bp.delete("/domains/<domain>")
@admin_only
def delete_domain(domain: str):
    accounts().delete_domain(domain)
    return "", 204


# --- mailboxes ---


@bp.get("/mailboxes")
@admin_only
def list_mailboxes():
    domain = request.args.get("domain") or None
    return jsonify(mailboxes=[mailbox_json(u) for u in accounts().list_users(domain)])


@bp.post("/mailboxes")
@admin_only
def add_mailbox():
    data = body()
    u = accounts().add_user(_str(data, "address"), _str(data, "password"),
                            admin=bool(_bool(data, "admin")), quota_bytes=_quota(data) or 0)
    return jsonify(mailbox_json(u)), 201


@bp.get("/mailboxes/<address>")
@admin_only
def get_mailbox(address: str):
    return jsonify(mailbox_json(_user_or_404(address)))


@bp.patch("/mailboxes/<address>")
@admin_only
def update_mailbox(address: str):
    data = body()
    _user_or_404(address)
    password = _str(data, "password", required=False)
    quota, admin, disabled = _quota(data), _bool(data, "admin"), _bool(data, "disabled")
    if address.lower() == g.user.address.lower() and (admin is False or disabled):
        raise APIError(400, "a token cannot remove its own user's admin rights or disable it")
    if password is not None:
        accounts().set_password(address, password)
    u = accounts().update_user(address, admin=admin, quota_bytes=quota, disabled=disabled)
    return jsonify(mailbox_json(u))


@bp.delete("/mailboxes/<address>")
@admin_only
def delete_mailbox(address: str):
    _user_or_404(address)
    if address.lower() == g.user.address.lower():
        raise APIError(400, "a token cannot delete its own user")
    accounts().delete_user(address, purge=request.args.get("purge") == "true")
    return "", 204


# --- aliases ---


@bp.get("/aliases")
@admin_only
def list_aliases():
    return jsonify(aliases=[{"source": a.source, "destinations": list(a.destinations)}
                            for a in accounts().list_aliases()])


@bp.post("/aliases")
@admin_only
def add_alias():
    data = body()
    dests = data.get("destinations")
    if not isinstance(dests, list) or not dests or not all(isinstance(d, str) for d in dests):
        raise APIError(400, "destinations: a non-empty list of addresses")
    alias = accounts().add_alias(_str(data, "source"), dests)
    return jsonify(source=alias.source, destinations=list(alias.destinations)), 201


@bp.delete("/aliases/<source>")
@admin_only
def delete_alias(source: str):
    accounts().delete_alias(source, request.args.get("destination") or None)
    return "", 204


# --- queue ---


@bp.get("/queue")
@admin_only
def list_queue():
    from server.queue.spool import Spool

    return jsonify(messages=[{
        "id": m.id, "sender": m.sender, "created": m.created, "next_attempt": m.next_attempt,
        "attempts": m.attempts, "size": m.size,
        "recipients": [{"address": r.address, "status": r.status, "attempts": r.attempts,
                        "last_error": r.last_error} for r in m.recipients],
    } for m in sorted(Spool(config().queue_dir).list(), key=lambda m: m.created)])


@bp.post("/queue/flush")
@admin_only
def flush_queue():
    if services().flush_queue is None:
        raise APIError(503, "the server is not running")
    services().flush_queue()
    return jsonify(status="retrying"), 202


@bp.delete("/queue/<qid>")
@admin_only
def delete_queued(qid: str):
    from server.queue.spool import Spool, check_id

    try:
        removed = Spool(config().queue_dir).remove(check_id(qid))
    except ValueError:
        removed = False
    if not removed:
        raise APIError(404, f"no queued message {qid}")
    return "", 204


# --- certificate, DKIM, DNS ---


@bp.get("/certificate")
@admin_only
def certificate():
    from admin.certificates import certificate_summary

    return jsonify(certificate_summary())


@bp.post("/certificate/renew")
@admin_only
def renew_certificate():
    if not config().acme.enabled:
        raise APIError(409, "ACME is off ([acme] enabled = false)")
    if services().renew_certificates is None:
        raise APIError(503, "the server is not running")
    services().renew_certificates()
    return jsonify(status="renewing"), 202


@bp.get("/dkim")
@admin_only
def dkim():
    from server import dkimkeys

    cfg = config()
    return jsonify(keys=[{"domain": k.domain, "selector": k.selector, "algorithm": k.algorithm,
                          "name": k.record_name, "txt": k.txt_value(),
                          "txt_strings": k.txt_strings()}
                         for d in accounts().list_domains()
                         for k in dkimkeys.keys_for(cfg.dkim_dir, d)])


@bp.get("/dns/<domain>")
@admin_only
def dns_records(domain: str):
    from admin.dns import records_for

    if domain not in accounts().list_domains():
        raise APIError(404, f"no domain {domain}")
    records = records_for(domain)
    out = [{"name": r.name, "type": r.rtype, "value": r.value, "purpose": r.purpose,
            "required": r.required, "condition": r.condition} for r in records]
    if request.args.get("check") in ("1", "true"):
        from server.dnscheck import check_records
        from server.dnsresolve import make_resolver

        checks = asyncio.run(check_records(records, make_resolver(config().dns)))
        for item, check in zip(out, checks, strict=True):
            item.update(status=check.status, found=list(check.found), fix=check.fix,
                        note=check.note)
    return jsonify(domain=domain, records=out)


# --- the token's own user ---


@bp.get("/me")
def me():
    return jsonify(mailbox_json(g.user))


@bp.get("/me/app-passwords")
def list_app_passwords():
    return jsonify(app_passwords=[
        {"id": p.id, "name": p.name, "created": p.created, "last_used": p.last_used}
        for p in accounts().list_app_passwords(g.user.address)])


@bp.post("/me/app-passwords")
def add_app_password():
    name = _str(body(), "name")
    if len(name) > 80:
        raise APIError(400, "name: at most 80 characters")
    pid, password = accounts().add_app_password(g.user.address, name)
    return jsonify(id=pid, name=name, password=password), 201


@bp.delete("/me/app-passwords/<int:pid>")
def revoke_app_password(pid: int):
    accounts().revoke_app_password(g.user.address, pid)
    return "", 204
