"""The ``mailstead`` command line: one program, one subcommand per task.

Exit status: 0 done, 1 refused (bad config, unknown user, ...), 2 usage error.
"""

from __future__ import annotations

import argparse
import fcntl
import getpass
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

from maildir.safeio import atomic_write, make_private_dir
from server import dkimkeys
from server.accounts import AccountError, AccountStore
from server.addresses import AddressError, normalize_domain
from server.config import (
    DEV_PORTS,
    PRODUCTION_PORTS,
    SERVICES,
    ConfigError,
    describe,
    load_config,
    parse_listen,
    parse_nameservers,
    render_config,
)
from server.tlscert import describe_certificate, make_self_signed

DEFAULT_CONFIG = "/etc/mailstead/mailstead.toml"


class CLIError(Exception):
    pass


def _config(args):
    return load_config(args.config or os.environ.get("MAILSTEAD_CONFIG") or DEFAULT_CONFIG)


def _store(args) -> AccountStore:
    config = _config(args)
    if not config.db_path.exists():
        raise CLIError(f"no account database at {config.db_path}; run 'mailstead init' first")
    return AccountStore.from_config(config)


def _read_password(args) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        raise CLIError("no terminal to ask for the password; use --password-stdin")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise CLIError("the passwords differ")
    return first


_SIZE = re.compile(r"^(\d+)\s*([kmgt]?)i?b?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"500M"`` -> bytes (binary units); ``"0"`` means no limit."""
    m = _SIZE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (examples: 0, 500M, 2G)")
    size = int(m.group(1)) * 1024 ** "_kmgt".index((m.group(2) or "_").lower())
    if size >= 2**62:
        raise argparse.ArgumentTypeError(f"size {text!r} is too large")
    return size


# --- init ---


def cmd_init(args) -> int:
    data_dir = Path(args.data_dir).absolute()
    config_path = data_dir / "mailstead.toml"
    if config_path.exists():
        raise CLIError(f"{config_path} already exists; refusing to overwrite an instance")
    try:
        domain = normalize_domain(args.domain)
        hostname = normalize_domain(args.hostname)
    except AddressError as err:
        raise CLIError(str(err)) from None
    ports = DEV_PORTS if args.dev else PRODUCTION_PORTS
    host = "127.0.0.1" if args.dev else "*"
    listen = {svc: f"{host}:{port}" for svc, port in ports.items()}
    for item in args.listen or []:
        svc, _, addr = item.partition("=")
        if svc not in SERVICES:
            raise CLIError(f"--listen {item}: unknown service {svc!r} ({', '.join(SERVICES)})")
        try:
            parse_listen(addr)
        except ValueError as err:
            raise CLIError(f"--listen {item}: {err}") from None
        listen[svc] = addr
    extra = {}
    if not args.dev:
        # A real server gets real certificates as soon as its DNS points here.
        extra["acme"] = {"enabled": True, "email": f"postmaster@{domain}"}
    if args.nameserver:
        try:
            extra["dns"] = {"nameservers": list(parse_nameservers(args.nameserver))}
        except ValueError as err:
            raise CLIError(f"--nameserver: {err}") from None
    make_private_dir(data_dir)
    text = render_config(hostname, data_dir, listen, extra)
    # Validate what we are about to write exactly as the server will read it.
    from server.config import parse_config

    config = parse_config(text, config_path)
    store = AccountStore.from_config(config)
    store.initialise()
    if domain not in store.list_domains():
        store.add_domain(domain)
    store.close()
    key = dkimkeys.generate(config.dkim_dir, domain, ed25519=config.dkim.ed25519)
    if not config.cert_file.exists():
        make_self_signed(hostname, config.cert_file, config.key_file)
    atomic_write(config_path, text, mode=0o640)
    print(f"initialised {data_dir} for {domain} (host {hostname})")
    print(f"  config:      {config_path}")
    print(f"  certificate: {describe_certificate(config.cert_file)} (self-signed)")
    print(f"  DKIM key:    {key.record_name}")
    print(f"next: mailstead -c {config_path} user add you@{domain} --admin")
    print(f"      mailstead -c {config_path} run")
    return 0


# --- config ---


def cmd_config_check(args) -> int:
    config = _config(args)
    from server.runner import IMPLEMENTED, StartupError, load_tls

    try:
        load_tls(config)
    except StartupError as err:
        raise CLIError(str(err)) from None
    print(f"{config.path}: ok")
    for name, addr in config.listeners().items():
        note = "" if name in IMPLEMENTED else "  (not part of this version yet)"
        print(f"  {name:<12} {addr}{note}")
    return 0


def cmd_config_describe(args) -> int:
    sys.stdout.write(describe(markdown=args.markdown))
    return 0


# --- run ---


def cmd_run(args) -> int:
    from server.runner import run

    return run(_config(args))


# --- users ---


def cmd_user_add(args) -> int:
    store = _store(args)
    user = store.add_user(args.address, _read_password(args), admin=args.admin,
                          quota_bytes=args.quota)
    print(f"created {user.address}{' (admin)' if user.is_admin else ''}; Maildir {user.maildir}")
    return 0


def cmd_user_passwd(args) -> int:
    store = _store(args)
    if store.get_user(args.address) is None:
        raise CLIError(f"no mailbox {args.address}")
    store.set_password(args.address, _read_password(args))
    print(f"password changed for {args.address}")
    return 0


def cmd_user_set(args) -> int:
    user = _store(args).update_user(args.address, admin=args.admin, quota_bytes=args.quota,
                                    disabled=args.disabled)
    print(_user_line(user))
    return 0


def _user_line(user) -> str:
    flags = [f for f, on in (("admin", user.is_admin), ("disabled", user.disabled)) if on]
    quota = f"quota {user.quota_bytes}" if user.quota_bytes else "no quota"
    return f"{user.address:<40} {quota:<18} {' '.join(flags)}".rstrip()


def cmd_user_list(args) -> int:
    for user in _store(args).list_users(args.domain):
        print(_user_line(user))
    return 0


def cmd_user_delete(args) -> int:
    moved = _store(args).delete_user(args.address, purge=args.purge)
    print(f"deleted {args.address}" + (f"; its mail was moved to {moved}" if moved else ""))
    return 0


# --- aliases and domains ---


def cmd_alias_add(args) -> int:
    alias = _store(args).add_alias(args.source, args.destinations)
    print(f"{alias.source} -> {', '.join(alias.destinations)}")
    return 0


def cmd_alias_list(args) -> int:
    for alias in _store(args).list_aliases():
        print(f"{alias.source} -> {', '.join(alias.destinations)}")
    return 0


def cmd_alias_delete(args) -> int:
    _store(args).delete_alias(args.source, args.destination)
    print(f"deleted alias {args.source}" + (f" -> {args.destination}" if args.destination else ""))
    return 0


def cmd_domain_add(args) -> int:
    config = _config(args)
    domain = _store(args).add_domain(args.domain)
    key = dkimkeys.generate(config.dkim_dir, domain, ed25519=config.dkim.ed25519)
    print(f"added {domain}; DKIM key {key.record_name}")
    return 0


def cmd_domain_list(args) -> int:
    for domain in _store(args).list_domains():
        print(domain)
    return 0


def cmd_domain_delete(args) -> int:
    _store(args).delete_domain(args.domain)
    print(f"deleted {args.domain}")
    return 0


def cmd_dkim_show(args) -> int:
    config = _config(args)
    domains = [normalize_domain(args.domain)] if args.domain else _store(args).list_domains()
    for domain in domains:
        keys = dkimkeys.keys_for(config.dkim_dir, domain)
        if not keys:
            raise CLIError(f"no DKIM key for {domain}")
        for key in keys:
            # Zone-file form: one TXT record made of 255-byte character-strings.
            strings = " ".join(f'"{part}"' for part in key.txt_strings())
            print(f"{key.record_name}. IN TXT ( {strings} )")
    return 0


def cmd_dns(args) -> int:
    import asyncio

    from server import dnsrecords

    config = _config(args)
    domains = _store(args).list_domains()
    if args.domain:
        if normalize_domain(args.domain) not in domains:
            raise CLIError(f"{args.domain} is not one of your domains "
                           f"(add it with 'mailstead domain add {args.domain}')")
        domains = [normalize_domain(args.domain)]
    spki = dnsrecords.served_spki_sha256(config)
    broken = False
    for n, domain in enumerate(domains):
        records = dnsrecords.expected_records(
            config, domain, dkim_keys=dkimkeys.keys_for(config.dkim_dir, domain),
            cert_spki_sha256=spki)
        if n:
            print()
        if args.zone:
            sys.stdout.write(dnsrecords.zone_file(records, origin=domain))
        elif args.check:
            from server.dnscheck import check_records
            from server.dnsresolve import make_resolver

            checks = asyncio.run(check_records(records, make_resolver(config.dns)))
            print(f"DNS records of {domain}, as DNS has them now:")
            for check in checks:
                rec = check.record
                print(f"  {check.status.upper():<9}{rec.rtype:<6}{rec.name}")
                if check.status != "ok" and check.found:
                    print(f"           found: {' | '.join(check.found)}")
                for text in (check.fix, check.note):
                    if text:
                        print(f"           {text}")
                broken = broken or check.breaks_mail
        else:
            print(f"DNS records to publish for {domain}:")
            for rec in records:
                need = "required" if rec.required else "recommended"
                print(f"  {rec.name:<34} {rec.rtype:<6}{rec.display_value()}")
                print(f"      {need}: {rec.purpose}"
                      + (f" ({rec.condition})" if rec.condition else ""))
    return 1 if broken else 0


# --- outbound queue ---


def _spool(args):
    from server.queue.spool import Spool

    return Spool(_config(args).queue_dir)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def cmd_queue_list(args) -> int:
    messages = _spool(args).list()
    for msg in messages:
        pending = msg.pending()
        last = next((r.last_error for r in pending if r.last_error), "")
        print(f"{msg.id}  <{msg.sender}>  {len(pending)}/{len(msg.recipients)} pending  "
              f"attempts {msg.attempts}  next {_when(msg.next_attempt)}")
        for rcpt in pending:
            print(f"    {rcpt.address}")
        if last:
            print(f"    last error: {last}")
    print(f"{len(messages)} message(s) queued")
    return 0


def cmd_queue_show(args) -> int:
    spool = _spool(args)
    try:
        msg = spool.get(args.id)
    except (KeyError, ValueError):
        raise CLIError(f"no queued message {args.id!r}") from None
    print(f"id:        {msg.id}\nsender:    <{msg.sender}>\norigin:    {msg.origin}")
    print(f"queued:    {_when(msg.created)}\nattempts:  {msg.attempts}\n"
          f"next try:  {_when(msg.next_attempt)}\nsize:      {msg.size}")
    for rcpt in msg.recipients:
        print(f"  {rcpt.address}: {rcpt.status}, {rcpt.attempts} attempt(s)"
              + (f", last: {rcpt.last_error}" if rcpt.last_error else ""))
    if args.message:
        sys.stdout.write(spool.read_message(msg.id).decode("utf-8", "replace"))
    return 0


def cmd_queue_delete(args) -> int:
    try:
        removed = _spool(args).remove(args.id)
    except ValueError:
        removed = False
    if not removed:
        raise CLIError(f"no queued message {args.id!r}")
    print(f"deleted {args.id} (no bounce is sent)")
    return 0


def cmd_queue_flush(args) -> int:
    pid = _signal_daemon(_config(args), signal.SIGUSR1)
    print(f"asked mailstead (pid {pid}) to retry every queued message now")
    return 0


def _signal_daemon(config, sig) -> int:
    """Send ``sig`` to the running server, never to a stale pid."""
    pidfile = config.data_path("mailstead.pid")
    not_running = CLIError(f"mailstead is not running on {config.data_dir}; "
                           "the queue is retried when it starts")
    try:
        fd = os.open(pidfile, os.O_RDONLY)
    except FileNotFoundError:
        raise not_running from None
    try:
        # The server holds this lock while it runs; if we can take it, the pid is stale.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        raise not_running
    except BlockingIOError:
        pid = int(os.read(fd, 32).decode().strip() or 0)
    finally:
        os.close(fd)
    os.kill(pid, sig)
    return pid


# --- TLS ---


def _when_utc(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def cmd_tls_status(args) -> int:
    from server.acme.manager import describe, renewal_time, status_file, tls_files

    config = _config(args)
    cert, _ = tls_files(config)
    info = describe(cert)
    print(f"serving:      {cert}")
    if info is None:
        print("              (no readable certificate)")
    else:
        print(f"names:        {', '.join(info['names'])}")
        print(f"issuer:       {info['issuer']}")
        print(f"expires:      {_when_utc(info['not_after'])}")
    if not config.acme.enabled:
        print("acme:         off ([acme] enabled = false)")
        return 0
    try:
        status = json.loads(status_file(config).read_text())
    except (OSError, ValueError):
        status = {}
    if info is not None and status.get("last_success"):
        print(f"renewal due:  {_when_utc(renewal_time(info))}")
    print(f"last attempt: {_when_utc(status.get('last_attempt'))}"
          + (f" ({status['last_challenge']})" if status.get("last_challenge") else ""))
    print(f"last success: {_when_utc(status.get('last_success'))}")
    print(f"last error:   {status.get('last_error') or '-'}")
    if status.get("next_attempt"):
        print(f"next attempt: {_when_utc(status['next_attempt'])}")
    return 0


def cmd_tls_renew(args) -> int:
    config = _config(args)
    if not config.acme.enabled:
        raise CLIError("ACME is off: set [acme] enabled = true first")
    pid = _signal_daemon(config, signal.SIGUSR2)
    print(f"asked mailstead (pid {pid}) to renew its certificate now; "
          "see 'mailstead tls status'")
    return 0


# --- backup and restore ---

PASSPHRASE_ENV = "MAILSTEAD_BACKUP_PASSPHRASE"


def _passphrase(args) -> bytes:
    """From --passphrase-file or the environment: never the command line (ps shows it)."""
    if args.passphrase_file:
        try:
            data = Path(args.passphrase_file).read_bytes()
        except OSError as err:
            raise CLIError(f"cannot read {args.passphrase_file}: {err.strerror}") from None
        data = data.removesuffix(b"\n").removesuffix(b"\r")
    else:
        data = os.environb.get(PASSPHRASE_ENV.encode(), b"")
    if not data:
        raise CLIError(f"no passphrase: give --passphrase-file FILE or set {PASSPHRASE_ENV}")
    return data


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cmd_backup(args) -> int:
    from server.restore import ArchiveError, verify

    if args.verify:
        if args.dest:
            raise CLIError("give either DEST or --verify ARCHIVE, not both")
        try:
            result = verify(args.verify, lambda: _passphrase(args))
        except ArchiveError as err:
            raise CLIError(f"{args.verify}: FAILED: {err}") from None
        m = result.manifest
        print(f"{args.verify}: ok: {result.files} files, {_mb(result.bytes)}"
              f"{', encrypted' if result.encrypted else ''}; made {m.get('created')} "
              f"on {m.get('hostname')}")
        return 0
    if not args.dest:
        raise CLIError("give DEST (a directory, a file or -) or --verify ARCHIVE")
    if args.passphrase_file and not args.encrypt:
        raise CLIError("--passphrase-file is for --encrypt (and for reading encrypted backups)")
    from server.backup import BackupError, backup

    passphrase = _passphrase(args) if args.encrypt else None
    try:
        result = backup(_config(args), args.dest, passphrase)
    except (BackupError, OSError) as err:
        raise CLIError(f"backup failed: {err}") from None
    out = sys.stderr if result.path == "-" else sys.stdout
    for path, reason in result.skipped:
        print(f"  not backed up: {path} ({reason})", file=out)
    size = f" ({_mb(result.archive_bytes)})" if result.path != "-" else ""
    print(f"backed up {result.files} files, {_mb(result.data_bytes)}, to {result.path}{size}"
          f"{', encrypted' if result.encrypted else ''} in {result.seconds:.1f} s", file=out)
    return 0


def cmd_restore(args) -> int:
    from server.restore import ArchiveError, RestoreError, restore

    target = Path(args.data_dir).absolute()
    try:
        result = restore(args.archive, target, lambda: _passphrase(args),
                         Path(args.config_out) if args.config_out else None)
    except RestoreError as err:
        raise CLIError(str(err)) from None
    except ArchiveError as err:
        raise CLIError(f"{args.archive}: FAILED, nothing restored: {err}") from None
    except OSError as err:
        raise CLIError(f"restore failed, nothing restored: {err}") from None
    m = result.manifest
    print(f"restored {result.files} files, {_mb(result.bytes)}, into {target}")
    print(f"  backup of {m.get('hostname')} ({m.get('data_dir')}) made {m.get('created')}")
    print(f"  config:  {result.config_path} ([server] data_dir = {target})")
    for item in m.get("skipped", []):
        print(f"  was not in the backup: {item['path']} ({item['reason']})")
    for warning in result.warnings:
        print(f"warning: {warning}")
    cfg = result.config_path
    print("next:")
    if os.geteuid() == 0:
        print(f"  chown -R mailstead:mailstead {target}")
        print("      (as root you own every file now: give them to the service's user)")
    print(f"  mailstead -c {cfg} config check")
    print("      (the [listen] addresses and TLS files are as they were on the old server)")
    print(f"  mailstead -c {cfg} run     (or: systemctl start mailstead)")
    print("IMAP indexes are rebuilt on first use with the same UIDs: mail apps keep their "
          "caches.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailstead", description="A personal mail server.")
    p.add_argument("-c", "--config", help=f"config file (default $MAILSTEAD_CONFIG or "
                                          f"{DEFAULT_CONFIG})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="create a new instance: config, database, keys, cert")
    init.add_argument("--data-dir", required=True)
    init.add_argument("--domain", required=True, help="your mail domain, e.g. example.com")
    init.add_argument("--hostname", required=True, help="the mail host, e.g. mail.example.com")
    init.add_argument("--dev", action="store_true",
                      help="listen on 127.0.0.1 high ports (2525, 2587, ...) for development")
    init.add_argument("--listen", action="append", metavar="SERVICE=HOST:PORT",
                      help="override one listener (repeatable; empty address turns it off)")
    init.add_argument("--nameserver", action="append", metavar="IP[:PORT]",
                      help="DNS server to use instead of the system resolver (repeatable)")
    init.set_defaults(func=cmd_init)

    sub.add_parser("run", help="run every configured service").set_defaults(func=cmd_run)

    cfg = sub.add_parser("config", help="check or describe the configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    cfg_sub.add_parser("check", help="validate the config file").set_defaults(
        func=cmd_config_check)
    desc = cfg_sub.add_parser("describe", help="every key with its default and meaning")
    desc.add_argument("--markdown", action="store_true")
    desc.set_defaults(func=cmd_config_describe)

    user = sub.add_parser("user", help="mailboxes")
    usub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = usub.add_parser("add", help="create a mailbox")
    add.add_argument("address")
    add.add_argument("--password-stdin", action="store_true")
    add.add_argument("--admin", action="store_true", help="may use the admin panel")
    add.add_argument("--quota", type=parse_size, default=0, help="e.g. 2G; 0 = none")
    add.set_defaults(func=cmd_user_add)
    pw = usub.add_parser("passwd", help="change a mailbox's password")
    pw.add_argument("address")
    pw.add_argument("--password-stdin", action="store_true")
    pw.set_defaults(func=cmd_user_passwd)
    st = usub.add_parser("set", help="change quota, admin or disabled")
    st.add_argument("address")
    st.add_argument("--quota", type=parse_size)
    st.add_argument("--admin", action=argparse.BooleanOptionalAction)
    st.add_argument("--disabled", action=argparse.BooleanOptionalAction)
    st.set_defaults(func=cmd_user_set)
    ls = usub.add_parser("list", help="list mailboxes")
    ls.add_argument("domain", nargs="?")
    ls.set_defaults(func=cmd_user_list)
    rm = usub.add_parser("delete", help="delete a mailbox (its mail is moved aside)")
    rm.add_argument("address")
    rm.add_argument("--purge", action="store_true", help="delete the mail too")
    rm.set_defaults(func=cmd_user_delete)

    alias = sub.add_parser("alias", help="aliases, catch-alls (@domain) and forwarding")
    asub = alias.add_subparsers(dest="alias_command", required=True, metavar="ACTION")
    aa = asub.add_parser("add", help="SOURCE DEST... (SOURCE @domain = catch-all)")
    aa.add_argument("source")
    aa.add_argument("destinations", nargs="+")
    aa.set_defaults(func=cmd_alias_add)
    asub.add_parser("list", help="list aliases").set_defaults(func=cmd_alias_list)
    ad = asub.add_parser("delete", help="delete an alias, or one destination of it")
    ad.add_argument("source")
    ad.add_argument("destination", nargs="?")
    ad.set_defaults(func=cmd_alias_delete)

    dom = sub.add_parser("domain", help="the domains mail is received for")
    dsub = dom.add_subparsers(dest="domain_command", required=True, metavar="ACTION")
    da = dsub.add_parser("add", help="add a domain (and make its DKIM key)")
    da.add_argument("domain")
    da.set_defaults(func=cmd_domain_add)
    dsub.add_parser("list", help="list domains").set_defaults(func=cmd_domain_list)
    dd = dsub.add_parser("delete", help="delete a domain with no mailboxes or aliases")
    dd.add_argument("domain")
    dd.set_defaults(func=cmd_domain_delete)

    queue = sub.add_parser("queue", help="the outbound queue")
    qsub = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    qsub.add_parser("list", help="queued messages, recipients, attempts, next try, last error"
                    ).set_defaults(func=cmd_queue_list)
    qs = qsub.add_parser("show", help="one queued message in detail")
    qs.add_argument("id")
    qs.add_argument("--message", action="store_true", help="print the message too")
    qs.set_defaults(func=cmd_queue_show)
    qd = qsub.add_parser("delete", help="drop a queued message (no bounce)")
    qd.add_argument("id")
    qd.set_defaults(func=cmd_queue_delete)
    qsub.add_parser("flush", help="retry every queued message now").set_defaults(
        func=cmd_queue_flush)

    tls = sub.add_parser("tls", help="certificates (ACME)")
    tsub = tls.add_subparsers(dest="tls_command", required=True, metavar="ACTION")
    tsub.add_parser("status", help="names, issuer, expiry, last renewal attempt and error"
                    ).set_defaults(func=cmd_tls_status)
    tsub.add_parser("renew", help="renew the certificate now").set_defaults(func=cmd_tls_renew)

    dnsp = sub.add_parser("dns", help="the DNS records to publish, and a live check of them")
    dnsp.add_argument("domain", nargs="?", help="one domain (default: all)")
    dmode = dnsp.add_mutually_exclusive_group()
    dmode.add_argument("--check", action="store_true",
                       help="look the records up; exit status 1 if one mail needs is wrong")
    dmode.add_argument("--zone", action="store_true", help="print a BIND zone-file fragment")
    dnsp.set_defaults(func=cmd_dns)

    bk = sub.add_parser("backup", help="archive the running instance (or --verify one)",
                        description="Write a consistent snapshot of the data dir and config "
                        "to DEST (a directory: a timestamped file is made in it; a file; "
                        "or - for stdout) while the server runs.")
    bk.add_argument("dest", nargs="?", metavar="DEST")
    bk.add_argument("--verify", metavar="ARCHIVE",
                    help="check an archive instead: every checksum and database")
    bk.add_argument("--encrypt", action="store_true",
                    help=f"encrypt with a passphrase (--passphrase-file or ${PASSPHRASE_ENV})")
    bk.add_argument("--passphrase-file", metavar="FILE")
    bk.set_defaults(func=cmd_backup)

    rs = sub.add_parser("restore", help="restore an archive into a new data dir")
    rs.add_argument("archive", metavar="ARCHIVE", help="the backup file, or - for stdin")
    rs.add_argument("--data-dir", required=True, help="new or empty directory")
    rs.add_argument("--config-out", metavar="PATH",
                    help="write the config here (default: DATA_DIR/mailstead.toml)")
    rs.add_argument("--passphrase-file", metavar="FILE",
                    help=f"for an encrypted archive (or set ${PASSPHRASE_ENV})")
    rs.set_defaults(func=cmd_restore)

    dkim = sub.add_parser("dkim", help="DKIM signing keys")
    ksub = dkim.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    ks = ksub.add_parser("show", help="print the DNS TXT record(s) to publish")
    ks.add_argument("domain", nargs="?")
    ks.set_defaults(func=cmd_dkim_show)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
    except (AccountError, CLIError) as err:
        print(f"mailstead: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    return 1
