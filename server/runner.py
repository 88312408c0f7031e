"""``mailstead run``: every configured service in one asyncio process.

SIGTERM/SIGINT stop it cleanly: listeners stop accepting, idle connections get 421, transactions
in progress get ``[smtp] shutdown_grace`` seconds to finish, deliveries in worker threads
complete, then the process exits 0. SIGHUP re-reads the config file, the certificate and the
DKIM keys; a bad new config is logged and the running one kept. SIGUSR1 retries the whole
outbound queue now (``mailstead queue flush``); the process id is in ``<data_dir>/mailstead.pid``.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import fcntl
import gc
import logging
import os
import signal
import ssl
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import uvloop

from maildir import cleanup_tmp, folder_path, list_folders
from server import dkimkeys
from server.abuse import Guard
from server.accounts import AccountStore
from server.acme.manager import CertificateManager, tls_files
from server.acme.responder import ChallengeResponder
from server.authlimit import AuthThrottle
from server.config import Config, ConfigError, load_config, worker_count
from server.dkimsign import DKIMSigner
from server.dnsresolve import make_resolver
from server.imap.notify import ChangeHub
from server.imap.server import IMAPContext, IMAPListener
from server.malloctune import tune_malloc
from server.memtrace import start_from_env as start_memtrace
from server.mtasts import MTASTS
from server.outbound.queue_runner import OutboundQueue
from server.pop3.server import POP3Context, POP3Listener
from server.queue.spool import Spool
from server.smtp.dispatch import MXDispatcher
from server.smtp.listener import SMTPListener
from server.smtp.mx import MXHandler
from server.smtp.submission import SubmissionHandler
from server.spam import SpamFilter
from server.spam.training import JunkTrainer
from server.tlscert import reload_certificate, server_context
from server.web.http import WebContext, WebListener
from server.web.panel import PanelListener

log = logging.getLogger("mailstead")

IMPLEMENTED = ("mx", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http",
               "admin")


class StartupError(Exception):
    """The server cannot start; the message names the config key to fix."""


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # aiosmtpd logs every client line at INFO, AUTH payloads included, and warns per
    # connection about our deliberate implicit-TLS AUTH set-up: only its errors get through.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")


def load_tls(config: Config) -> ssl.SSLContext:
    cert, key = tls_files(config)
    try:
        return server_context(cert, key)
    except (OSError, ssl.SSLError) as err:
        if key is None:  # a damaged ACME file: fall back to [tls] and let ACME renew
            log.error("cannot load %s (%s); serving [tls] cert_file until renewed", cert, err)
            return load_tls_files(config)
        raise StartupError(
            f"[tls] cert_file/key_file: cannot load {config.cert_file} and {config.key_file}: "
            f"{getattr(err, 'strerror', None) or err}") from None


def load_tls_files(config: Config) -> ssl.SSLContext:
    try:
        return server_context(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as err:
        raise StartupError(
            f"[tls] cert_file/key_file: cannot load {config.cert_file} and {config.key_file}: "
            f"{getattr(err, 'strerror', None) or err}") from None


class Daemon:
    def __init__(self, config: Config):
        self.config = config
        self.accounts = AccountStore.from_config(config)
        self.tls = load_tls(config)
        self.executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="io")
        self.spool = Spool(config.queue_dir)
        self.signer = DKIMSigner(config.dkim_dir, ed25519=config.dkim.ed25519)
        self.mtasts = self._mtasts(config)
        # One throttle for every service that takes a password: a guesser gains nothing by
        # switching from submission to IMAP. Its failures feed the guard: bans (kept in the
        # data dir), the fail2ban log, and the per-IP connection limits every listener asks.
        self.guard = Guard(config.abuse, config.server.data_dir)
        self.throttle = AuthThrottle(config.accounts.auth_failure_delay, self.guard)
        self.hub = ChangeHub()
        self.queue = OutboundQueue(config, self.accounts, self.spool, self.executor,
                                   self.mtasts, self.signer, on_delivered=self.delivered)
        self.imap = IMAPContext(config, self.accounts, self.throttle, self.executor, self.hub,
                                self.guard)
        self.pop3 = POP3Context(config, self.accounts, self.throttle, self.executor, self.imap,
                                self.hub, self.guard)
        # IMAP moves into and out of Junk teach rspamd, when [spam] configures it.
        self.trainer = JunkTrainer.from_config(config, self.executor)
        # DNSBL at MAIL, greylisting at RCPT, rspamd after DATA; each off unless configured.
        self.spam = SpamFilter(config, self.executor)
        self.imap.on_junk_move = self.trainer.observe
        # tls-alpn-01 answers are switched in by SNI on the one context every listener shares;
        # http-01 tokens are served by the http listener.
        self.responder = ChallengeResponder()
        self.responder.install(self.tls)
        self.web = WebContext(config, self.accounts, self.responder)
        self.certificates = CertificateManager(config, self.accounts, self.tls, self.responder,
                                               self.executor)
        self.listeners: list = []
        self.handlers: list = []
        self.stopping = asyncio.Event()

    @staticmethod
    def _mtasts(config: Config) -> MTASTS:
        return MTASTS(make_resolver(config.dns, cache=True), config.data_path("mta-sts"),
                      https_port=config.outbound.https_port,
                      cafile=config.outbound.ca_file or None)

    def delivered(self, addresses: list[str], folder: str = "INBOX") -> None:
        """New mail in ``folder`` (INBOX, or Junk for spam): IDLE sessions hear of it now."""
        for address in addresses:
            self.hub.changed(address, folder)

    def ensure_dkim_keys(self) -> None:
        """Every domain gets the keys the config asks for (say, Ed25519 switched on later)."""
        for domain in self.accounts.list_domains():
            had = {k.selector for k in dkimkeys.keys_for(self.config.dkim_dir, domain)}
            dkimkeys.generate(self.config.dkim_dir, domain, ed25519=self.config.dkim.ed25519)
            for key in dkimkeys.keys_for(self.config.dkim_dir, domain):
                if key.selector not in had:
                    log.warning("new DKIM key for %s: publish %s (mailstead dkim show)",
                                domain, key.record_name)
        self.signer.reload()

    def panel_app(self):
        from admin import Services, create_app

        loop = asyncio.get_running_loop()
        services = Services(
            accounts=self.accounts, throttle=self.throttle, responder=self.responder,
            renew_certificates=lambda: loop.call_soon_threadsafe(self.certificates.renew_now),
            flush_queue=lambda: loop.call_soon_threadsafe(
                lambda: asyncio.ensure_future(self.queue.flush())))
        return create_app(self.config, services)

    async def start(self) -> None:
        if not self.config.db_path.exists():
            raise StartupError(f"[server] data_dir: no account database at {self.config.db_path}"
                               " (run 'mailstead init' first)")
        self.pid_fd = hold_pidfile(self.config.data_path("mailstead.pid"))
        self.accounts.initialise()
        self.ensure_dkim_keys()
        self.hub.bind(asyncio.get_running_loop())
        common = (self.config, self.accounts, self.executor, self.spool, self.queue.wake,
                  self.delivered)
        mx = MXHandler(*common)
        mx.spam = self.spam
        submission = SubmissionHandler(
            *common, signer=self.signer,
            throttle=self.throttle, guard=self.guard)
        self.handlers = [mx, submission]
        for name, addr in self.config.listeners().items():
            if name not in IMPLEMENTED:
                log.warning("%s on %s: not part of this version yet; not started", name, addr)
                continue
            if name in ("imap", "imaps"):
                self.listeners.append(IMAPListener(name, addr, self.imap, self.tls,
                                                   implicit_tls=name == "imaps"))
                continue
            if name == "http":
                self.listeners.append(WebListener(name, addr, self.web, None))
                continue
            if name == "admin":
                self.listeners.append(PanelListener(name, addr, self.panel_app(), self.tls,
                                                    guard=self.guard))
                continue
            if name in ("pop3", "pop3s"):
                self.listeners.append(POP3Listener(name, addr, self.pop3, self.tls,
                                                   implicit_tls=name == "pop3s"))
                continue
            handler = mx if name == "mx" else submission
            listener = SMTPListener(
                name, addr, handler, self.config, self.tls, submission=name != "mx",
                implicit_tls=name == "submissions", guard=self.guard)
            workers = worker_count(self.config.smtp.workers)
            if name == "mx" and workers:
                listener = MXDispatcher(name, addr, listener, self.config, workers, self.guard,
                                        self.delivered, self.queue.wake)
                self.certificates.on_installed = listener.reload_tls
            self.listeners.append(listener)
        for listener in self.listeners:
            try:
                await listener.start()
            except OSError as err:
                await self.stop()
                raise StartupError(f"[listen] {listener.name}: cannot listen on "
                                   f"{listener.listen}: {err.strerror or err}") from None
        log.info("mailstead ready: %s", ", ".join(f"{lst.name} {lst.listen}"
                                                  for lst in self.listeners) or "no services")

    def reload(self) -> None:
        try:
            new = load_config(self.config.path)
        except ConfigError as err:
            log.error("reload refused, keeping the running config: %s", err)
            return
        cert, key = tls_files(new)
        try:
            reload_certificate(self.tls, cert, key)
        except (OSError, ssl.SSLError) as err:
            log.error("reload: cannot load certificate %s: %s; keeping the old one", cert, err)
        self.accounts.apply_config(new)
        if new.listeners() != self.config.listeners():
            log.warning("reload: [listen] changes take effect at the next restart")
        for obj in (*self.listeners, *self.handlers, self.queue, self.imap, self.pop3,
                    self.certificates):
            obj.update_config(new)
        self.trainer.update_config(new)
        self.spam.update_config(new)
        self.signer.reload()
        self.throttle.base_delay = new.accounts.auth_failure_delay
        self.guard.update_config(new.abuse)
        self.queue.mtasts = self.mtasts = self._mtasts(new)
        self.config = new
        logging.getLogger().setLevel(getattr(logging, new.log.level.upper()))
        log.info("reloaded %s", new.path)

    async def stop(self) -> None:
        await self.trainer.stop()  # before the executor its reads use shuts down
        await self.spam.close()
        await self.certificates.stop()
        for listener in self.listeners:
            listener.stop_accepting()
        grace = self.config.smtp.shutdown_grace
        await asyncio.gather(*(lst.drain(grace) for lst in self.listeners), self.queue.stop(grace))
        # Deliveries already handed to worker threads finish before the process exits.
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)
        self.imap.close()
        self.hub.close()
        self.accounts.close()

    async def clean_tmp_forever(self) -> None:
        """Remove what crashed writers left in the Maildirs' tmp/ (after 36 h, as the
        Maildir spec says), at start and twice a day."""
        while True:
            try:
                removed = await asyncio.get_running_loop().run_in_executor(
                    self.executor, clean_all_tmp, self.accounts)
                if removed:
                    log.info("removed %d stale file(s) from Maildir tmp/ directories", removed)
            except Exception:
                log.exception("cleaning Maildir tmp/ directories failed")
            await asyncio.sleep(12 * 3600)

    async def serve(self) -> int:
        await self.start()
        # Everything made so far (modules, config, listeners) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it, which was
        # tens of milliseconds of every big FETCH or SEARCH.
        gc.freeze()
        pidfile = self.config.data_path("mailstead.pid")
        cleaner = asyncio.create_task(self.clean_tmp_forever())
        self.queue.start()
        self.certificates.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, lambda: asyncio.ensure_future(self.queue.flush()))
        loop.add_signal_handler(signal.SIGUSR2, self.certificates.renew_now)
        await self.stopping.wait()
        log.info("shutting down")
        cleaner.cancel()
        await self.stop()
        pidfile.unlink(missing_ok=True)
        log.info("stopped")
        return 0


def hold_pidfile(path) -> int:
    """Write our pid into ``path`` and hold an exclusive lock on it for our lifetime.

    The lock says "a mailstead runs on this data dir": a second one refuses to start (two
    queue runners would send every message twice), and ``mailstead queue flush`` signals the
    pid only while the lock is held, never a stale pid that now belongs to another program.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartupError(f"[server] data_dir: another mailstead is running on it "
                           f"(lock held on {path})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def clean_all_tmp(accounts: AccountStore) -> int:
    removed = 0
    for user in accounts.list_users():
        if user.maildir.is_dir():
            for name in ["INBOX", *list_folders(user.maildir)]:
                removed += cleanup_tmp(folder_path(user.maildir, name))
    return removed


def tune_tls_buffers() -> None:
    """asyncio's TLS gives every connection a 256 KiB read buffer (``SSLProtocol.max_size``),
    touched at once. A TLS record carries at most 16 KiB, so 32 KiB reads lose nothing. The
    listeners run on uvloop, whose TLS touches only what it reads; asyncio's is still what
    aiosmtpd builds for SMTP STARTTLS."""
    asyncio.sslproto.SSLProtocol.max_size = 32 * 1024


def run(config: Config) -> int:
    setup_logging(config.log.level)
    tune_tls_buffers()
    tune_malloc()
    start_memtrace()  # MAILSTEAD_MEMTRACE: tests/stress/soak.py --memtrace only
    try:
        return uvloop.run(_serve(config))
    except StartupError as err:
        log.error("cannot start: %s", err)
        return 1


async def _serve(config: Config) -> int:
    return await Daemon(config).serve()
