"""The mailstead admin web panel: ``create_app(config)`` with one blueprint per area.

Served by Hypercorn on the ``admin`` listener, in the daemon's own event loop and with the
same ``SSLContext`` as the mail services (``server/web/panel.py``), so an ACME renewal reaches
the panel like every other listener. Pages are rendered on the server and work without
JavaScript; the little script there is (copy buttons) only adds convenience.

Who sees what: every page but the login and the well-known client set-up documents needs a
login; admin pages need ``is_admin``; a user's own pages only ever show that user.
"""

from __future__ import annotations

import datetime
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from maildir.safeio import atomic_write, make_private_dir
from server.config import Config

SECRET_FILE = "admin-secret.key"
# "__Host-" makes browsers refuse the cookie unless it is Secure, host-only and for path "/":
# no subdomain (say, a hostile one on the same registrable domain) can set or shadow it.
COOKIE_NAME = "__Host-mailstead"


@dataclass
class Services:
    """What the running daemon lends the panel; each may be None (a test app, a CLI tool)."""

    accounts: Any = None
    throttle: Any = None  # server.authlimit.AuthThrottle shared with the mail services
    responder: Any = None  # ACME challenge responder (http-01 tokens on this listener too)
    renew_certificates: Callable[[], None] | None = None
    flush_queue: Callable[[], None] | None = None
    extra: dict = field(default_factory=dict)


def _secret_key(config: Config) -> bytes:
    """The session-signing key, made once per data dir (0600): restarts keep people logged in."""
    path = config.data_path(SECRET_FILE)
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    make_private_dir(path.parent)
    key = secrets.token_bytes(64)
    atomic_write(path, key, 0o600)
    return key


def _datetime(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(ts))) if ts else "-"


def create_app(config: Config, services: Services | None = None, *,
               testing: bool = False) -> Flask:
    from server.accounts import AccountStore

    services = services or Services()
    if services.accounts is None:
        services.accounts = AccountStore.from_config(config)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=_secret_key(config),
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/",
        SESSION_REFRESH_EACH_REQUEST=True,
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(hours=config.web.session_hours),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        WTF_CSRF_SSL_STRICT=True,
        MAX_CONTENT_LENGTH=1024 * 1024,
        TESTING=testing,
    )
    app.extensions["mailstead"] = {"config": config, "services": services}
    app.jinja_env.filters["datetime"] = _datetime
    csrf = CSRFProtect(app)

    from admin import (
        account,
        aliases,
        api,
        auth,
        certificates,
        dkim,
        dns,
        domains,
        home,
        mailboxes,
        queue,
        wellknown,
    )

    for module in (auth, home, domains, mailboxes, aliases, queue, certificates, dkim, dns,
                   account, wellknown, api):
        app.register_blueprint(module.bp)
    csrf.exempt(wellknown.bp)  # machines (Outlook's autodiscover POST) carry no CSRF token
    csrf.exempt(api.bp)  # bearer tokens, never cookies: nothing for a forged request to ride
    auth.install(app)
    return app


def update_config(app: Flask, config: Config) -> None:
    """SIGHUP: new settings for the running panel (the secret key stays)."""
    app.extensions["mailstead"]["config"] = config
    app.config["PERMANENT_SESSION_LIFETIME"] = datetime.timedelta(hours=config.web.session_hours)
