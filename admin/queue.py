"""The outbound queue: what is waiting, why, retry now, delete."""

from __future__ import annotations

from flask import Blueprint, abort, render_template

from admin.common import FormError, config, done, form_action, services
from server.queue.spool import Spool, check_id

bp = Blueprint("queue", __name__, url_prefix="/queue")


def _spool() -> Spool:
    return Spool(config().queue_dir)


@bp.get("/")
def index():
    messages = sorted(_spool().list(), key=lambda m: m.created)
    return render_template("queue.html", messages=messages,
                           can_retry=services().flush_queue is not None)


@bp.get("/<qid>")
def show(qid: str):
    try:
        msg = _spool().get(check_id(qid))
    except (KeyError, ValueError, OSError):  # gone (delivered meanwhile), malformed, unreadable
        abort(404)
    return render_template("queue_show.html", msg=msg)


@bp.post("/retry")
@form_action("queue.index")
def retry():
    flush = services().flush_queue
    if flush is None:
        raise FormError("The server is not running; the queue is retried when it starts.")
    flush()
    return done("Retrying every queued message now.", "queue.index")


@bp.post("/<qid>/delete")
@form_action("queue.index")
def delete(qid: str):
    try:
        removed = _spool().remove(check_id(qid))
    except ValueError:
        removed = False
    if not removed:
        raise FormError(f"No queued message {qid}.")
    return done(f"Deleted {qid}; no bounce is sent.", "queue.index")
