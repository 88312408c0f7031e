"""Signing in and out, and the gate in front of every other page.

The mailbox password (never an app password: those are for devices) then, if the user turned it
on, a TOTP code or a recovery code. Failed attempts count against the client's address and the
account, shared with the mail services' throttle; while an address or account is cooling down
the form answers 429 without checking the password, so guessing gets no faster by hanging up.
"""

from __future__ import annotations

import threading
import time

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError

from admin.common import accounts, config, services
from server.addresses import AddressError, parse_address
from server.authlimit import AuthThrottle, client_key

bp = Blueprint("auth", __name__)

# Endpoints anyone may reach; everything else needs a login (a new view is private by default).
PUBLIC = {"auth.login", "auth.second_factor", "static"}
PUBLIC_BLUEPRINTS = {"wellknown"}
# Blueprints for admins only; the rest ("home", "account") serve any signed-in user.
ADMIN_BLUEPRINTS = {"domains", "mailboxes", "aliases", "queue", "certificates", "dkim", "dns"}
SECOND_FACTOR_SECONDS = 300  # between the password and the code
SESSIONS_FILE = "admin-sessions.sqlite3"


class Cooldown:
    """When the next login attempt may be checked, per client network and per account."""

    def __init__(self, throttle: AuthThrottle):
        self.throttle = throttle
        self.lock = threading.Lock()
        self.until: dict[str, float] = {}

    def wait(self, ip: str, account: str) -> float:
        now = time.monotonic()
        with self.lock:
            return max(0.0, max(self.until.get(k, 0.0) for k in self._keys(ip, account)) - now)

    def failure(self, ip: str, account: str) -> None:
        with self.lock:
            self.throttle.failure(ip, account, service="admin")
            pause = self.throttle.delay(ip, account)
            if len(self.until) > 100_000:
                self.until.clear()
            for key in self._keys(ip, account):
                self.until[key] = time.monotonic() + pause

    def success(self, ip: str, account: str) -> None:
        with self.lock:
            self.throttle.success(ip, account)
            self.until.pop(f"user:{account}", None)

    @staticmethod
    def _keys(ip: str, account: str) -> tuple[str, str]:
        return client_key(ip), f"user:{account}"


def _cooldown() -> Cooldown:
    ext = current_app.extensions["mailstead"]
    if "cooldown" not in ext:
        svc = services()
        throttle = svc.throttle or AuthThrottle(config().accounts.auth_failure_delay)
        ext["cooldown"] = Cooldown(throttle)
    return ext["cooldown"]


def _client_ip() -> str:
    return request.remote_addr or "unknown"


def _account_key(address: str) -> str:
    """The throttle's key for an account: its normalised address, so that spelling it
    differently ("User"@Example.test., say) does not buy a fresh count of free guesses."""
    try:
        return parse_address(address).key
    except AddressError:
        return address.lower()


def _authenticate(address: str, password: str):
    return accounts().authenticate(address, password, app_passwords=False)


def _totp_enabled(address: str) -> bool:
    return bool(getattr(accounts(), "totp_enabled", lambda a: False)(address))


def sessions():
    """The server-side session records (admin/sessions.py), one store per app."""
    ext = current_app.extensions["mailstead"]
    if "sessions" not in ext:
        from admin.sessions import SessionStore

        ext["sessions"] = SessionStore(config().data_path(SESSIONS_FILE))
    return ext["sessions"]


def _max_idle() -> float:
    return config().web.session_hours * 3600


def _finish_login(address: str):
    target = session.get("next")
    session.clear()  # a fresh session: nothing from before the login carries over
    session.permanent = True
    session["user"] = address
    session["auth_at"] = time.time()
    session["sid"] = sessions().create(address)
    sessions().prune(_max_idle())
    if not (target and target.startswith("/") and not target.startswith("//")):
        target = url_for("home.index")
    return redirect(target)


def _too_many(wait: float, template: str, **context):
    context["error"] = (f"Too many failed attempts. Try again in {int(wait) + 1} "
                        f"second{'s' if wait >= 1 else ''}.")
    return render_template(template, **context), 429, {"Retry-After": str(int(wait) + 1)}


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        if g.get("user"):
            return redirect(url_for("home.index"))
        return render_template("login.html")
    address = request.form.get("address", "").strip()[:320]
    password = request.form.get("password", "")
    ip, cooldown, key = _client_ip(), _cooldown(), _account_key(address)
    wait = cooldown.wait(ip, key)
    if wait > 0:
        return _too_many(wait, "login.html", address=address)
    user = _authenticate(address, password) if address and password else None
    if user is None:
        cooldown.failure(ip, key)
        return render_template("login.html", address=address,
                               error="Wrong address or password."), 401
    if _totp_enabled(user.address):
        # The account's failures are forgiven only once the code is right too: were the
        # password enough, whoever has it could sign in again before each guess of the code
        # and, from many addresses, guess codes without ever slowing down.
        next_target = session.get("next")
        session.clear()
        session["pending"] = {"user": user.address, "at": time.time()}
        if next_target:
            session["next"] = next_target
        return redirect(url_for("auth.second_factor"))
    cooldown.success(ip, key)
    return _finish_login(user.address)


@bp.route("/login/code", methods=["GET", "POST"])
def second_factor():
    pending = session.get("pending")
    if not pending or time.time() - pending["at"] > SECOND_FACTOR_SECONDS:
        session.pop("pending", None)
        return redirect(url_for("auth.login"))
    if request.method == "GET":
        return render_template("second_factor.html")
    address, ip, cooldown = pending["user"], _client_ip(), _cooldown()
    key = _account_key(address)
    wait = cooldown.wait(ip, key)
    if wait > 0:
        return _too_many(wait, "second_factor.html")
    user = accounts().get_user(address)
    if user is None or user.disabled or \
            (getattr(user, "password_changed", 0) or 0) > pending["at"]:
        # The password changed (or the mailbox went) between the two steps: start again.
        session.pop("pending", None)
        return redirect(url_for("auth.login"))
    code = request.form.get("code", "").strip().replace(" ", "")[:64]
    if not code or not accounts().verify_second_factor(address, code):
        cooldown.failure(ip, key)
        return render_template("second_factor.html", error="That code is not right."), 401
    cooldown.success(ip, key)
    return _finish_login(address)


@bp.post("/logout")
def logout():
    sessions().revoke(session.get("sid"))
    session.clear()
    return redirect(url_for("auth.login"))


def _load_user():
    address = session.get("user")
    if not address:
        return None
    user = accounts().get_user(address)
    changed = getattr(user, "password_changed", 0) or 0
    if user is None or user.disabled or changed > session.get("auth_at", 0) or \
            not sessions().valid(session.get("sid"), address, _max_idle()):
        # Deleted, disabled, the password changed since this login (a stolen session ends
        # when the owner changes the password), or signed out / expired on the server.
        session.clear()
        return None
    return user


def _same_origin_only() -> None:
    """A form POST whose Origin header names another site is refused like a bad CSRF token,
    whatever token and Referer it carries: browsers set Origin themselves on every POST, so
    it is the one thing a cross-site page cannot choose ("null" included, which sandboxed
    frames and cross-site redirects send)."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise CSRFError("The form was sent from another site.")


def install(app: Flask) -> None:
    @app.before_request
    def gate():
        # The listener refuses a banned client's new connections; this ends its keep-alive
        # ones too, for every page and the API.
        guard = getattr(services().throttle, "guard", None)
        if guard is not None and guard.is_banned(_client_ip()):
            abort(403)
        g.user = _load_user()
        endpoint = request.endpoint or ""
        if request.blueprint == "api":
            return None  # token authentication, in the API blueprint
        if request.blueprint not in PUBLIC_BLUEPRINTS:
            _same_origin_only()
        if endpoint in PUBLIC or request.blueprint in PUBLIC_BLUEPRINTS:
            return None
        if g.user is None:
            if request.method == "GET" and endpoint:
                session["next"] = request.full_path.rstrip("?")
            return redirect(url_for("auth.login"))
        if request.blueprint in ADMIN_BLUEPRINTS and not g.user.is_admin:
            abort(403)
        return None

    @app.after_request
    def security_headers(resp):
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
        resp.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if g.get("user") is not None:
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.context_processor
    def inject():
        return {"me": g.get("user"), "hostname": config().server.hostname}
