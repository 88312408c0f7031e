"""Domains: the ones mail is accepted for."""

from __future__ import annotations

from flask import Blueprint, render_template

from admin.common import accounts, config, done, field, form_action
from server import dkimkeys

bp = Blueprint("domains", __name__, url_prefix="/domains")


@bp.get("/")
def index():
    store = accounts()
    domains = store.list_domains()
    users = store.list_users()
    counts = {d: sum(1 for u in users if u.domain == d) for d in domains}
    return render_template("domains.html", domains=domains, counts=counts)


@bp.post("/add")
@form_action("domains.index")
def add():
    name = accounts().add_domain(field("domain", max_length=253))
    # Every domain signs its mail from the start; the key must be in DNS before it is used,
    # which the DNS page shows.
    dkimkeys.generate(config().dkim_dir, name, ed25519=config().dkim.ed25519)
    return done(f"Added {name}. Publish its DNS records next.", "dns.domain", domain=name)


@bp.post("/<domain>/delete")
@form_action("domains.index")
def delete(domain: str):
    accounts().delete_domain(domain)
    return done(f"Removed {domain}.", "domains.index")
