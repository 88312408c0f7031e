"""A user's own page: password, quota use, app passwords, two-factor, API tokens, profile.

Only ever the signed-in user's data: no view here takes an address from the request.
"""

from __future__ import annotations

import time

import segno
from flask import Blueprint, Response, abort, current_app, render_template, request, session

from admin.auth import sessions
from admin.common import FormError, accounts, config, done, field, form_action, format_size, user
from admin.mailboxes import usage_of

bp = Blueprint("account", __name__, url_prefix="/account")


def _page(**extra):
    me = user()
    store = accounts()
    return render_template(
        "account.html", usage=usage_of(me), format_size=format_size,
        app_passwords=store.list_app_passwords(me.address),
        tokens=store.list_api_tokens(me.address) if me.is_admin else [],
        totp=store.totp_enabled(me.address),
        recovery_left=store.recovery_codes_left(me.address), **extra)


TOTP_SETUP_SECONDS = 600


def _pending_totp() -> dict:
    """Secrets shown in a QR code but not yet confirmed, by address (this process only)."""
    return current_app.extensions["mailstead"].setdefault("pending_totp", {})


@bp.get("/")
def index():
    return _page()


@bp.post("/password")
@form_action("account.index")
def password():
    me = user()
    if accounts().authenticate(me.address, request.form.get("current", ""),
                               app_passwords=False) is None:
        raise FormError("Your current password is not right.")
    new = request.form.get("password", "")
    if new != request.form.get("password2", ""):
        raise FormError("The two new passwords differ.")
    accounts().set_password(me.address, new)
    # Every other session of this user ends (auth.py compares password_changed, and their
    # server-side records go); this one is renewed so the owner stays signed in.
    session["auth_at"] = time.time()
    sessions().revoke_user(me.address, keep=session.get("sid"))
    return done("Password changed. Other sessions are signed out.", "account.index")


@bp.post("/app-passwords")
@form_action("account.index")
def add_app_password():
    name = field("name", max_length=80)
    _id, secret = accounts().add_app_password(user().address, name)
    return _page(new_app_password=secret, new_app_password_name=name)


@bp.post("/app-passwords/<int:pid>/revoke")
@form_action("account.index")
def revoke_app_password(pid: int):
    accounts().revoke_app_password(user().address, pid)
    return done("App password revoked: devices using it can no longer sign in.",
                "account.index")


@bp.post("/totp/begin")
@form_action("account.index")
def totp_begin():
    me = user()
    if accounts().totp_enabled(me.address):
        raise FormError("Two-factor sign-in is on; turn it off first to set up a new phone.")
    secret = accounts().totp_begin(me.address)
    # Kept on the server until confirmed: the session cookie is signed, not encrypted.
    _pending_totp()[me.address] = (secret, time.time() + TOTP_SETUP_SECONDS)
    uri = accounts().totp_uri(me.address, secret, config().web.totp_issuer)
    # svg_inline: segno writes SVG as bytes, so a text buffer fails; this returns a str.
    qr = segno.make(uri, error="m").svg_inline(scale=4)
    return _page(totp_secret=secret, totp_qr=qr, totp_uri=uri)


@bp.post("/totp/enable")
@form_action("account.index")
def totp_enable():
    secret, expires = _pending_totp().pop(user().address, (None, 0))
    if not secret or expires < time.time():
        raise FormError("Start the set-up again.")
    code = field("code", max_length=12).replace(" ", "")
    codes = accounts().totp_enable(user().address, secret, code)
    if not codes:
        raise FormError("That code is not right; start the set-up again.")
    return _page(recovery_codes=codes)


@bp.post("/totp/disable")
@form_action("account.index")
def totp_disable():
    me = user()
    if accounts().authenticate(me.address, request.form.get("current", ""),
                               app_passwords=False) is None:
        raise FormError("Your current password is not right.")
    accounts().totp_disable(me.address)
    return done("Two-factor sign-in is off.", "account.index")


@bp.post("/tokens")
@form_action("account.index")
def add_token():
    if not user().is_admin:
        abort(403)
    name = field("name", max_length=80)
    _id, token = accounts().add_api_token(user().address, name)
    return _page(new_token=token, new_token_name=name)


@bp.post("/tokens/<int:tid>/revoke")
@form_action("account.index")
def revoke_token(tid: int):
    accounts().revoke_api_token(user().address, tid)
    return done("API token revoked.", "account.index")


@bp.post("/apple-profile")
@form_action("account.index")
def apple_profile():
    """An iPhone/iPad/Mac profile with a new app password inside, so the device is set up by
    opening one file; the password is revocable like any other."""
    from server.clientconfig import mobileconfig

    me = user()
    label = field("device", required=False, max_length=60) or "Apple device"
    _id, secret = accounts().add_app_password(me.address, f"{label} (profile)")
    body = mobileconfig(config(), me.address, password=secret)
    name = f"{me.address.replace('@', '-at-')}.mobileconfig"
    return Response(body, mimetype="application/x-apple-aspen-config",
                    headers={"Content-Disposition": f'attachment; filename="{name}"',
                             "Cache-Control": "no-store"})
