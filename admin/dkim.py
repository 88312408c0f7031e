"""DKIM signing keys per domain and the records to publish."""

from __future__ import annotations

from flask import Blueprint, render_template

from admin.common import accounts, config
from server import dkimkeys

bp = Blueprint("dkim", __name__, url_prefix="/dkim")


@bp.get("/")
def index():
    cfg = config()
    keys = {d: dkimkeys.keys_for(cfg.dkim_dir, d) for d in accounts().list_domains()}
    return render_template("dkim.html", keys=keys)
