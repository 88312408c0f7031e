"""Mailboxes: create, reset password, quota, disable, admin, delete."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from admin.auth import sessions
from admin.common import (
    FormError,
    accounts,
    done,
    field,
    form_action,
    format_size,
    parse_size,
    user,
)
from maildir import quota

bp = Blueprint("mailboxes", __name__, url_prefix="/mailboxes")


def usage_of(u) -> int | None:
    """Bytes stored. Without a quota, deliveries do not keep ``maildirsize`` current (nothing
    needs it), so the Maildir is counted afresh: a stat per message, fine for a page view."""
    try:
        if not u.quota_bytes:
            return quota.recalculate(u.maildir)[0]
        return quota.usage(u.maildir, u.quota_bytes)[0]
    except OSError:
        return None


def size_input(n: int) -> str:
    """A quota as the settings form shows it: exact, since saving the form for another change
    sends it back (format_size rounds: 1500M would come back as 1.5G, i.e. 1536M)."""
    for unit, scale in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _is_me(address: str) -> bool:
    """Is ``address`` the signed-in admin's own mailbox, however it is spelt? The store
    normalises ("Admin"@example.com. is admin@example.com), so comparing strings would let
    an admin lock themselves out through a differently spelt URL."""
    target = accounts().get_user(address)
    return target is not None and target.id == user().id


@bp.get("/")
def index():
    store = accounts()
    users = store.list_users()
    return render_template("mailboxes.html", users=users, domains=store.list_domains(),
                           usage={u.address: usage_of(u) for u in users},
                           format_size=format_size, size_input=size_input)


@bp.post("/add")
@form_action("mailboxes.index")
def add():
    address = f"{field('local', max_length=64)}@{field('domain', max_length=253)}"
    password = request.form.get("password", "")
    if password != request.form.get("password2", ""):
        raise FormError("The two passwords differ.")
    created = accounts().add_user(address, password, admin=bool(request.form.get("admin")),
                                  quota_bytes=parse_size(request.form.get("quota") or "0"))
    return done(f"Created {created.address}.", "mailboxes.index")


@bp.post("/<address>/password")
@form_action("mailboxes.index")
def password(address: str):
    new = request.form.get("password", "")
    if not new:
        raise FormError("Type the new password.")
    accounts().set_password(address, new)
    target = accounts().get_user(address)
    if target is not None:
        sessions().revoke_user(target.address)
    return done(f"New password set for {address}; its sessions are signed out.",
                "mailboxes.index")


@bp.post("/<address>/settings")
@form_action("mailboxes.index")
def settings(address: str):
    admin = bool(request.form.get("admin"))
    disabled = bool(request.form.get("disabled"))
    if (not admin or disabled) and _is_me(address):
        raise FormError("You cannot remove your own admin rights or disable yourself.")
    accounts().update_user(address, admin=admin, disabled=disabled,
                           quota_bytes=parse_size(request.form.get("quota") or "0"))
    return done(f"Saved {address}.", "mailboxes.index")


@bp.post("/<address>/delete")
@form_action("mailboxes.index")
def delete(address: str):
    if _is_me(address):
        raise FormError("You cannot delete your own mailbox here.")
    aside = accounts().delete_user(address)
    return done(f"Deleted {address}; its mail was kept in {aside}." if aside
                else f"Deleted {address}.", "mailboxes.index")
