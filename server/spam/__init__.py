"""Spam defence for the MX: DNS blocklists, greylisting, rspamd scoring, Junk-move training.

``SpamFilter`` is the one object the MX handler talks to; each part is off until ``[spam]``
turns it on (``dnsbl_zones``, ``greylisting``, ``rspamd_url``). Its contract:

``await connect_check(ip) -> Reply | None``
    The DNSBL verdict for the connecting client (cached per IP for 5 minutes, so calling it at
    EHLO, MAIL and RCPT costs one lookup). A Reply (``554 5.7.1 Service unavailable; client
    [ip] blocked using zone``) means refuse: answer it to MAIL FROM or RCPT TO, rather than
    as the greeting, so the log line has the envelope and the client gives up instead of
    retrying (Postfix's ``smtpd_delay_reject`` does the same). Clients in ``[abuse] allow``
    are never looked up; a lookup that fails or times out is "not listed".

``await rcpt_check(ip, sender, rcpt, authenticated) -> Reply | None``
    Greylisting, per recipient, after the recipient is known to be ours (an unknown user gets
    its 550 first). A Reply (``451 4.7.1 Greylisted``) is answered to that RCPT TO instead of
    accepting it; other recipients of the same transaction are checked on their own. Signed-in
    and ``[abuse] allow`` clients always pass. ``sender`` "" is the null reverse-path.

``await scan(message, *, ip, helo, sender, rcpts, queue_id, hostname=None, user=None)
-> SpamResult``
    After DATA, before delivery. ``result.headers`` (complete ``Name: value\\r\\n`` fields:
    X-Spam-Score, X-Spam-Status, X-Spamd-Result; or ``X-Spam-Status: unknown (...)`` when
    rspamd was unreachable; none when rspamd is off) go on top of every copy, next to our
    Received header. Then by ``result.action``: ``"accept"`` delivers to INBOX, ``"junk"``
    delivers into each recipient's Junk folder, ``"reject"`` answers ``SPAM_REJECTED``
    (``550 5.7.1``) for the whole message and delivers nothing. ``scan`` never raises: an
    rspamd that is down, slow (``[spam] rspamd_timeout``) or broken means accept unscored,
    never a lost or refused message. ``hostname`` is the client's verified reverse name.

``update_config(config)`` on SIGHUP; ``await close()`` at shutdown.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from concurrent.futures import Executor

from server.config import Config
from server.dnsresolve import make_resolver
from server.smtp.replies import BLOCKLISTED, GREYLISTED, SPAM_REJECTED, Reply
from server.spam import verdict
from server.spam.dnsbl import DNSBL
from server.spam.greylist import Greylist
from server.spam.rspamd import RspamdClient, RspamdError, close_later
from server.spam.verdict import ACCEPT, JUNK, REJECT, SpamResult

log = logging.getLogger("mailstead.spam")

GREYLIST_DB = "greylist.sqlite3"

__all__ = ["ACCEPT", "JUNK", "REJECT", "SPAM_REJECTED", "SpamFilter", "SpamResult"]


class SpamFilter:
    def __init__(self, config: Config, executor: Executor | None = None):
        self.executor = executor
        self.greylist: Greylist | None = None
        self.rspamd: RspamdClient | None = None
        self.update_config(config)

    def update_config(self, config: Config) -> None:
        spam = config.spam
        self.config = config
        self.allow = tuple(ipaddress.ip_network(n) for n in config.abuse.allow)
        self.dnsbl = DNSBL(spam.dnsbl_zones, make_resolver(config.dns)) \
            if spam.dnsbl_zones else None
        if spam.greylisting:
            path = config.data_path(GREYLIST_DB)
            if self.greylist is None or self.greylist.path != path:
                self.greylist = Greylist(path, delay=spam.greylist_delay,
                                         auto_allow=spam.greylist_auto_allow,
                                         executor=self.executor)
            self.greylist.delay = spam.greylist_delay
            self.greylist.auto_allow = spam.greylist_auto_allow
        close_later(self.rspamd, spam.rspamd_timeout)
        self.rspamd = RspamdClient(
            spam.rspamd_url, controller_url=spam.rspamd_controller_url,
            password=spam.rspamd_password, timeout=spam.rspamd_timeout,
        ) if spam.rspamd_url else None

    def allowed(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.allow)

    async def connect_check(self, ip: str) -> Reply | None:
        if self.dnsbl is None or self.allowed(ip):
            return None
        listing = await self.dnsbl.check(ip)
        if listing is None:
            return None
        log.info("dnsbl: %s listed in %s (%s)%s", ip, listing.zone, listing.code,
                 f": {listing.text}" if listing.text else "")
        return BLOCKLISTED.with_text(
            f"Service unavailable; client [{ip}] blocked using {listing.zone}")

    async def rcpt_check(self, ip: str, sender: str, rcpt: str,
                         authenticated: bool = False) -> Reply | None:
        if self.greylist is None or not self.config.spam.greylisting or authenticated \
                or self.allowed(ip):
            return None
        try:
            passed = await self.greylist.check(ip, sender, rcpt)
        except Exception:
            # A broken greylist database must not stop mail: let it through and say so.
            log.exception("greylisting failed for %s; accepting", ip)
            return None
        return None if passed else GREYLISTED

    async def scan(self, message: bytes, *, ip: str | None, helo: str | None, sender: str,
                   rcpts: Sequence[str], queue_id: str = "", hostname: str | None = None,
                   user: str | None = None) -> SpamResult:
        client = self.rspamd
        if client is None:
            return SpamResult(ACCEPT, [], None, "rspamd off")
        spam = self.config.spam
        try:
            reply = await client.check(
                message, ip=ip, helo=helo, sender=sender, rcpts=rcpts, hostname=hostname,
                queue_id=queue_id, user=user, mta_name=self.config.server.hostname)
        except RspamdError as err:
            log.warning("rspamd: %s not scanned, accepting it: %s", queue_id or "message", err)
            return verdict.unscanned("rspamd unreachable")
        except Exception:
            log.exception("rspamd: %s not scanned, accepting it", queue_id or "message")
            return verdict.unscanned("rspamd failed")
        result = verdict.decide(reply, spam.junk_score, spam.reject_score)
        log.info("rspamd: %s %s (%s)", queue_id or "message", result.action, result.reason)
        return result

    async def close(self) -> None:
        if self.rspamd is not None:
            await self.rspamd.aclose()
        if self.greylist is not None:
            self.greylist.close()

