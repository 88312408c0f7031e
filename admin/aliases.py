"""Aliases: addresses that deliver to mailboxes or forward outside, and catch-alls."""

from __future__ import annotations

import re

from flask import Blueprint, render_template, request

from admin.common import FormError, accounts, done, field, form_action

bp = Blueprint("aliases", __name__, url_prefix="/aliases")


@bp.get("/")
def index():
    store = accounts()
    return render_template("aliases.html", aliases=store.list_aliases(),
                           domains=store.list_domains())


@bp.post("/add")
@form_action("aliases.index")
def add():
    local = field("local", required=False, max_length=64)
    domain = field("domain", max_length=253)
    # An empty local part (or "*") is the catch-all of the domain.
    source = f"@{domain}" if local in ("", "*") else f"{local}@{domain}"
    destinations = [d for d in re.split(r"[\s,;]+", field("destinations", max_length=4000)) if d]
    if not destinations:
        raise FormError("Give at least one destination address.")
    alias = accounts().add_alias(source, destinations)
    return done(f"{alias.source} now goes to {', '.join(alias.destinations)}.", "aliases.index")


@bp.post("/delete")
@form_action("aliases.index")
def delete():
    source = field("source", max_length=400)
    destination = request.form.get("destination") or None
    accounts().delete_alias(source, destination)
    return done(f"Removed {source}" + (f" → {destination}." if destination else "."),
                "aliases.index")
