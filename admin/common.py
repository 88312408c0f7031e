"""What every blueprint uses: the config, the account store, the signed-in user, form errors."""

from __future__ import annotations

import re

from flask import abort, current_app, flash, g, redirect, request, url_for

from server.config import Config


def config() -> Config:
    return current_app.extensions["mailstead"]["config"]


def services():
    return current_app.extensions["mailstead"]["services"]


def accounts():
    return services().accounts


def user():
    """The signed-in user (``auth.install`` has loaded it, or refused the request)."""
    return g.user


def require_admin() -> None:
    if not (g.get("user") and g.user.is_admin):
        abort(403)


def field(name: str, *, required: bool = True, max_length: int = 500) -> str:
    """A form field, stripped; a missing required one or an overlong one is a form error."""
    value = request.form.get(name, "").strip()
    if required and not value:
        raise FormError(f"{name.replace('_', ' ').capitalize()} is required.")
    if len(value) > max_length:
        raise FormError(f"{name.replace('_', ' ').capitalize()} is too long.")
    if any(c in value for c in "\r\n\0"):
        # Nothing in the panel takes more than one line; a CR/LF reaching a header or a
        # config line is how injection starts.
        raise FormError(f"{name.replace('_', ' ').capitalize()} must be one line.")
    return value


class FormError(ValueError):
    """A problem with what was typed, shown next to the form (HTTP 400 on re-render)."""


def done(message: str, endpoint: str, **values):
    flash(message, "ok")
    return redirect(url_for(endpoint, **values))


def parse_size(text: str) -> int:
    """'2G', '500M', '0' (unlimited) -> bytes."""
    # Digits, an optional fraction and unit, spaces: float() alone would also take "1\r\n",
    # "1e3", "nan" and "inf" (a line break in a field is refused everywhere in the panel).
    match = re.fullmatch(r" *(\d+(?:\.\d+)?) *([KMGT]?)B? *", text.upper())
    if match is None:
        raise FormError("Quota must be a size such as 500M or 2G (0 = unlimited).")
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    value, scale = float(match[1]), units[match[2]]
    if value * scale >= 2**62:
        raise FormError("Quota must be a size such as 500M or 2G (0 = unlimited).")
    return int(value * scale)


def format_quota(n: int) -> str:
    return "unlimited" if not n else format_size(n)


def format_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}B".replace(".0 ", " ")
    return f"{n} B"


def form_action(back: str):
    """A POST view whose FormError/AccountError is shown on the page at ``back`` (303)."""
    import functools

    from server.accounts import AccountError

    def wrap(view):
        @functools.wraps(view)
        def run(*args, **kwargs):
            try:
                return view(*args, **kwargs)
            except (FormError, AccountError, ValueError) as err:
                flash(str(err) or "That did not work.", "error")
                return redirect(url_for(back, **kwargs), 303)
        return run
    return wrap
