"""The TLS certificate every service serves, and ACME's renewal state."""

from __future__ import annotations

import time

from flask import Blueprint, render_template

from admin.common import FormError, config, done, form_action, services
from server.acme.manager import describe, renewal_time, status_file, tls_files

bp = Blueprint("certificates", __name__, url_prefix="/certificate")


def _status() -> dict:
    import json

    try:
        return json.loads(status_file(config()).read_text())
    except (OSError, ValueError):
        return {}


def certificate_summary() -> dict:
    """Served certificate, ACME state and one verdict for the home page."""
    cfg = config()
    path, _ = tls_files(cfg)
    info = describe(path) or {}
    status = _status() if cfg.acme.enabled else {}
    now = time.time()
    if not info:
        verdict, level = "No readable certificate", "bad"
    elif info["not_after"] < now:
        verdict, level = "Expired", "bad"
    elif cfg.acme.enabled and not status.get("last_success"):
        verdict, level = "Self-signed until the first certificate is issued", "warn"
    elif status.get("last_error") and status.get("failures"):
        verdict, level = "Renewal failing", "warn"
    elif not cfg.acme.enabled:
        verdict, level = "Managed by hand ([acme] off)", "muted"
    else:
        verdict, level = "Valid", "ok"
    return {"path": str(path), "info": info, "status": status, "acme": cfg.acme.enabled,
            "verdict": verdict, "level": level,
            "renew_at": renewal_time(info) if info and status.get("last_success") else None,
            "days_left": int((info["not_after"] - now) // 86400) if info else None}


@bp.get("/")
def index():
    return render_template("certificates.html", cert=certificate_summary(),
                           can_renew=services().renew_certificates is not None)


@bp.post("/renew")
@form_action("certificates.index")
def renew():
    if not config().acme.enabled:
        raise FormError("ACME is off: set [acme] enabled = true in the config first.")
    if services().renew_certificates is None:
        raise FormError("The server is not running.")
    services().renew_certificates()
    return done("Renewal started; reload this page in a few seconds.", "certificates.index")
