"""The first page after signing in: what needs attention."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, url_for

from admin.common import accounts, config, user

bp = Blueprint("home", __name__)


@bp.get("/")
def index():
    me = user()
    if not me.is_admin:
        return redirect(url_for("account.index"))
    from admin.certificates import certificate_summary
    from server.queue.spool import Spool

    store = accounts()
    queued = Spool(config().queue_dir).list()
    return render_template(
        "home.html", domains=store.list_domains(), users=store.list_users(),
        aliases=store.list_aliases(), queued=len(queued),
        failing=sum(1 for m in queued if any(r.last_error for r in m.pending())),
        cert=certificate_summary())
