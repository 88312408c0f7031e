"""The DNS records each domain needs, checked live against DNS, with a zone-file download."""

from __future__ import annotations

import asyncio

from flask import Blueprint, Response, abort, render_template, request

from admin.common import accounts, config

bp = Blueprint("dns", __name__, url_prefix="/dns")


def records_for(domain: str):
    from server import dkimkeys
    from server.acme.manager import tls_files
    from server.dnsrecords import expected_records, spki_sha256

    cfg = config()
    try:
        spki = spki_sha256(tls_files(cfg)[0].read_bytes())
    except (OSError, ValueError):
        spki = None
    return expected_records(cfg, domain, dkim_keys=dkimkeys.keys_for(cfg.dkim_dir, domain),
                            cert_spki_sha256=spki)


def _domain(domain: str) -> str:
    if domain not in accounts().list_domains():
        abort(404)
    return domain


@bp.get("/")
def index():
    domains = accounts().list_domains()
    return render_template("dns_index.html", domains=domains)


@bp.get("/<domain>")
def domain(domain: str):
    domain = _domain(domain)
    records = records_for(domain)
    checks = None
    if request.args.get("check"):
        from server.dnscheck import check_records
        from server.dnsresolve import make_resolver

        checks = asyncio.run(check_records(records, make_resolver(config().dns)))
    return render_template("dns.html", domain=domain, records=records, checks=checks)


@bp.get("/<domain>/zone")
def zone(domain: str):
    from server.dnsrecords import zone_file

    domain = _domain(domain)
    return Response(zone_file(records_for(domain), origin=domain), mimetype="text/plain",
                    headers={"Content-Disposition": f'attachment; filename="{domain}.zone"'})
